//! One simulated server: a real `dengine-core` instance, a disk that models fsync, and the
//! KV state machine. A crash loses every write not yet reported durable and all volatile
//! state; a restart rebuilds the node from what the disk kept.

use std::collections::VecDeque;

use dengine_core::{
    Config, Entry, EntryPayload, InitialState, Membership, MemoryStore, NodeId, PersistRequest,
    Raft, SnapshotMeta,
};

use crate::kv::{Command, KvStore};

/// A write handed to the disk, durable at `done_at`.
#[derive(Debug)]
struct PendingWrite {
    done_at: u64,
    write: PersistRequest,
}

/// A simulated server.
pub struct SimNode {
    /// The node's id.
    pub id: NodeId,
    /// The protocol core, while the node is up.
    pub raft: Option<Raft<MemoryStore>>,
    /// What survived the last crash: the durable log and hard state. While the node is up, the
    /// core's own log reader is the durable log (writes reach it only once durable).
    durable: MemoryStore,
    /// Writes issued but not yet durable, in order.
    disk_queue: VecDeque<PendingWrite>,
    /// Volatile state machine, rebuilt from the log after a restart.
    pub kv: KvStore,
    /// Counts restarts; responses from an earlier incarnation are void.
    pub incarnation: u64,
    /// Paused (SIGSTOP): does nothing until this tick.
    pub paused_until: Option<u64>,
    /// Ticks missed while paused, delivered on resume (a runtime's clock keeps running).
    pub missed_ticks: u64,
    /// Skips one tick every `skew_period` ticks (clock-rate skew); 0 = no skew.
    pub skew_period: u64,
    /// The newest durable snapshot: its metadata and the store as of its last entry.
    pub snapshot: Option<(SnapshotMeta, KvStore)>,
    /// The configuration as of the last applied entry (recorded in snapshots).
    pub applied_membership: Membership,
    /// Stopped by the operator after being removed from the cluster; started again when
    /// added back.
    pub decommissioned: bool,
    config: Config,
    membership: Membership,
}

/// What applying one committed entry produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The entry's id.
    pub id: dengine_core::EntryId,
    /// For KV commands: whether it took effect.
    pub effect: Option<bool>,
}

impl SimNode {
    /// A fresh node of a new cluster.
    pub fn new(config: Config, membership: Membership, skew_period: u64) -> Self {
        let mut node = SimNode {
            id: config.id,
            raft: None,
            durable: MemoryStore::new(),
            disk_queue: VecDeque::new(),
            kv: KvStore::default(),
            incarnation: 0,
            paused_until: None,
            missed_ticks: 0,
            skew_period,
            snapshot: None,
            applied_membership: membership.clone(),
            decommissioned: false,
            config,
            membership,
        };
        node.start();
        node
    }

    fn start(&mut self) {
        let initial = InitialState {
            hard_state: self.durable.hard_state(),
            membership: self.membership.clone(),
            applied: self
                .snapshot
                .as_ref()
                .map_or(0, |(m, _)| m.last_included.index),
            snapshot: self.snapshot.as_ref().map(|(m, _)| m.clone()),
        };
        // Invariant: the configuration was validated when the simulation was set up.
        #[allow(clippy::expect_used)]
        let raft = Raft::new(
            self.config.clone(),
            std::mem::take(&mut self.durable),
            initial,
        )
        .expect("simulation config is valid");
        self.raft = Some(raft);
        // The state machine restarts from the snapshot (or empty) and re-applies the log.
        match &self.snapshot {
            Some((meta, kv)) => {
                self.kv = kv.clone();
                self.applied_membership = meta.membership.clone();
            }
            None => {
                self.kv = KvStore::default();
                self.applied_membership = self.membership.clone();
            }
        }
    }

    /// Whether the node is up (not crashed).
    pub fn is_up(&self) -> bool {
        self.raft.is_some()
    }

    /// Whether the node is up and not paused at `now`.
    pub fn is_running(&self, now: u64) -> bool {
        self.is_up() && self.paused_until.is_none_or(|t| t <= now)
    }

    /// Crashes the node: volatile state and un-synced writes are lost.
    pub fn crash(&mut self) {
        if let Some(raft) = self.raft.take() {
            self.durable = raft.log_reader().clone();
        }
        self.disk_queue.clear();
        self.paused_until = None;
        self.missed_ticks = 0;
    }

    /// Restarts a crashed node from its durable state.
    pub fn restart(&mut self) {
        self.incarnation += 1;
        self.start();
    }

    /// Queues a write; it becomes durable at `done_at` (writes complete in order).
    pub fn submit_write(&mut self, write: PersistRequest, done_at: u64) {
        let done_at = self
            .disk_queue
            .back()
            .map_or(done_at, |w| w.done_at.max(done_at));
        self.disk_queue.push_back(PendingWrite { done_at, write });
    }

    /// Completes the writes due at `now`: they reach the durable log and the core learns they
    /// are durable.
    pub fn complete_writes(&mut self, now: u64) -> Result<(), String> {
        while self.disk_queue.front().is_some_and(|w| w.done_at <= now) {
            let Some(pending) = self.disk_queue.pop_front() else {
                break;
            };
            let Some(raft) = self.raft.as_mut() else {
                return Ok(());
            };
            raft.log_reader()
                .persist_now(&pending.write)
                .map_err(|e| format!("node {}: log reader write failed: {e}", self.id))?;
            raft.on_persisted(pending.write.done());
        }
        Ok(())
    }

    /// Whether a write is waiting for the disk.
    pub fn has_pending_writes(&self) -> bool {
        !self.disk_queue.is_empty()
    }

    /// Applies committed entries to the KV store and reports them to the core.
    pub fn apply(&mut self, entries: &[Entry]) -> Vec<Applied> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let effect = match &e.payload {
                EntryPayload::Normal(data) => Command::decode(data).map(|c| self.kv.apply(c)),
                EntryPayload::Membership(m) => {
                    self.applied_membership = m.clone();
                    None
                }
                EntryPayload::Blank => None,
            };
            out.push(Applied { id: e.id(), effect });
        }
        if let (Some(raft), Some(last)) = (self.raft.as_mut(), entries.last()) {
            raft.on_applied(last.index);
        }
        out
    }

    /// Takes a snapshot of the state machine at the applied index, if at least `every` entries
    /// were applied since the last one; returns its metadata.
    pub fn maybe_snapshot(&mut self, every: u64) -> Option<SnapshotMeta> {
        let raft = self.raft.as_mut()?;
        let applied = raft.applied_index();
        let last = self
            .snapshot
            .as_ref()
            .map_or(0, |(m, _)| m.last_included.index);
        if applied < last + every {
            return None;
        }
        let term = raft.log_term(applied).ok()?;
        let meta = SnapshotMeta {
            last_included: dengine_core::EntryId::new(term, applied),
            membership: self.applied_membership.clone(),
        };
        raft.on_snapshot_created(meta.clone()).ok()?;
        self.snapshot = Some((meta.clone(), self.kv.clone()));
        Some(meta)
    }

    /// Installs a snapshot received from the leader: state machine, log and metadata.
    pub fn install_snapshot(&mut self, meta: SnapshotMeta, kv: KvStore) -> Result<(), String> {
        let Some(raft) = self.raft.as_mut() else {
            return Ok(());
        };
        let last = meta.last_included;
        if let Err(e) = raft.log_reader().reset_to_snapshot_now(&meta) {
            return Err(format!(
                "node {}: installing snapshot {last} failed: {e}",
                self.id
            ));
        }
        self.kv = kv.clone();
        self.applied_membership = meta.membership.clone();
        self.snapshot = Some((meta, kv));
        raft.on_snapshot_installed(last);
        Ok(())
    }

    /// Compacts the log up to `to` (the core's `Ready::compact_log_to`).
    pub fn compact(&mut self, to: dengine_core::LogIndex) -> Result<(), String> {
        match self.raft.as_mut() {
            Some(raft) => raft
                .log_reader()
                .purge_now(to)
                .map_err(|e| format!("node {}: compaction failed: {e}", self.id)),
            None => Ok(()),
        }
    }

    /// Installs the snapshot the core asks for (`Ready::snapshot_to_install`), whose data a
    /// leader took earlier (`snapshots`). Storage applies operations in order: log writes
    /// issued before the install land first (the install then replaces them).
    pub fn install_from(
        &mut self,
        meta: SnapshotMeta,
        snapshots: &std::collections::HashMap<dengine_core::EntryId, KvStore>,
    ) -> Result<(), String> {
        let last = meta.last_included;
        let Some(kv) = snapshots.get(&last).cloned() else {
            return Err(format!(
                "node {}: asked to install unknown snapshot {last}",
                self.id
            ));
        };
        self.complete_writes(u64::MAX)?;
        self.install_snapshot(meta, kv)
    }

    /// The durable log (what a crash keeps).
    pub fn durable_log(&self) -> &MemoryStore {
        match &self.raft {
            Some(raft) => raft.log_reader(),
            None => &self.durable,
        }
    }
}
