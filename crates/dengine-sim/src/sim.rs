//! The simulation loop: a cluster of cores, the simulated network and disks, the client
//! workload, the fault schedule, and the checks, all driven by one seed.

use std::collections::HashMap;

use dengine_core::{
    Config, EntryId, EntryPayload, LogIndex, LogReader, Membership, NodeId, ProposeError, ReadCtx,
    ReadMode, Role,
};

use crate::config::{Faults, SimConfig};
use crate::invariants::{self, Invariants, entry_hash};
use crate::kv::{Command, KvStore};
use crate::linearizability::{self, History, Op, OpResult, Operation, Outcome, Verdict};
use crate::network::Network;
use crate::node::SimNode;
use crate::rng::SimRng;

/// Counts of what a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ticks simulated (fault phase plus healing).
    pub ticks: u64,
    /// Ticks the healing phase took to restore progress.
    pub heal_ticks: u64,
    /// Partitions opened.
    pub partitions: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Node pauses.
    pub pauses: u64,
    /// Messages dropped (loss and cut links).
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Client operations that completed.
    pub ops_ok: u64,
    /// Client operations whose outcome stayed unknown.
    pub ops_unknown: u64,
    /// Operations checked by the linearizability checker.
    pub ops_checked: u64,
    /// Leader elections observed.
    pub elections: u64,
    /// Entries known committed at the end.
    pub committed: u64,
}

/// A successful run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The run's seed.
    pub seed: u64,
    /// Hash of every event: equal for two runs of one seed.
    pub trace_hash: u64,
    /// What happened.
    pub stats: Stats,
    /// The readable event trace (only with `verbose`).
    pub trace: Vec<String>,
}

/// A failed run: which check failed, and how to replay it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The run's seed.
    pub seed: u64,
    /// The tick at which the failure was detected.
    pub tick: u64,
    /// What went wrong.
    pub message: String,
    /// The command that replays the run with a readable trace.
    pub replay: String,
    /// The readable event trace (only with `verbose`).
    pub trace: Vec<String>,
    /// What happened until the failure.
    pub stats: Stats,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at tick {}: {}\n  replay: {}",
            self.seed, self.tick, self.message, self.replay
        )
    }
}

/// What a client waits for.
#[derive(Clone, Copy, Debug)]
enum Wait {
    Write(EntryId),
    Read(ReadCtx),
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    key: u64,
    op: Op,
    invoke: u64,
    deadline: u64,
    node: NodeId,
    incarnation: u64,
    wait: Wait,
}

#[derive(Clone, Copy, Debug)]
struct Client {
    id: u64,
    target: NodeId,
    /// An operation that has not been accepted by a node yet (retried on the next tick).
    next: Option<(u64, Op)>,
    pending: Option<Pending>,
}

struct Sim {
    cfg: SimConfig,
    rng: SimRng,
    faults: Faults,
    healing: bool,
    /// The node with a degraded disk, if any.
    slow_disk: Option<NodeId>,
    now: u64,
    ids: Vec<NodeId>,
    nodes: Vec<SimNode>,
    restart_at: Vec<Option<u64>>,
    net: Network,
    partition_until: Option<u64>,
    clients: Vec<Client>,
    history: History,
    /// Logical clock of client events, so real-time order is exact.
    clock: u64,
    next_value: u64,
    next_ctx: ReadCtx,
    writes: HashMap<(NodeId, LogIndex), usize>,
    reads: HashMap<(NodeId, ReadCtx), usize>,
    acked: Vec<EntryId>,
    /// Every snapshot taken by any node, by last included entry: what a leader streams to a
    /// follower that needs it.
    snapshots: HashMap<EntryId, KvStore>,
    /// The newest configuration known committed (applied somewhere), with its index.
    committed_config: (LogIndex, Membership),
    /// Nodes being added are not stopped before this tick, even if not yet members.
    joining_until: Vec<u64>,
    inv: Invariants,
    roles: Vec<(Role, u64)>,
    stats: Stats,
    hash: u64,
    trace: Vec<String>,
}

/// Runs one simulation. Every choice comes from `config.seed`; the same config gives the same
/// result and trace hash.
pub fn run(config: &SimConfig) -> Result<Report, Box<Failure>> {
    let mut sim = Sim::new(config.clone());
    match sim.run() {
        Ok(()) => Ok(Report {
            seed: config.seed,
            trace_hash: sim.hash,
            stats: sim.stats.clone(),
            trace: std::mem::take(&mut sim.trace),
        }),
        Err(message) => {
            sim.collect_stats();
            Err(Box::new(Failure {
                seed: config.seed,
                tick: sim.now,
                message,
                replay: config.replay_command(),
                trace: std::mem::take(&mut sim.trace),
                stats: sim.stats.clone(),
            }))
        }
    }
}

impl Sim {
    fn new(cfg: SimConfig) -> Sim {
        let mut rng = SimRng::new(cfg.seed);
        let faults = cfg.faults.unwrap_or_else(|| Faults::from_rng(&mut rng));
        let ids: Vec<NodeId> = (1..=cfg.nodes).collect();
        // With membership churn the cluster starts with three voters; the other nodes start
        // empty and join when the leader adds them.
        let initial_voters = if faults.membership_changes {
            3
        } else {
            cfg.nodes
        };
        let membership = Membership::new(ids.iter().copied().take(initial_voters as usize));
        let nodes = ids
            .iter()
            .map(|&id| {
                let mut c = Config::new(id);
                c.seed = cfg.seed;
                c.pre_vote = faults.pre_vote;
                c.check_quorum = faults.check_quorum;
                c.snapshot_trailing_entries = faults.snapshot_trailing;
                // Removed nodes come back with their storage intact (see `change_membership`).
                c.allow_node_id_reuse = true;
                if let Some(window) = faults.small_window {
                    c.max_message_bytes = 1;
                    c.max_inflight_messages = window;
                }
                let skew = if faults.tick_skew {
                    rng.between(20, 60)
                } else {
                    0
                };
                let initial = if membership.contains(id) {
                    membership.clone()
                } else {
                    Membership::default()
                };
                let mut node = SimNode::new(c, initial, skew);
                if let Some(raft) = node.raft.as_mut() {
                    for &bug in &cfg.bugs {
                        raft.inject_bug(bug);
                    }
                }
                node
            })
            .collect();
        let slow_disk = faults.slow_node_disk.then(|| 1 + rng.below(cfg.nodes));
        let clients = (0..cfg.clients)
            .map(|i| Client {
                id: i,
                target: 1 + rng.below(cfg.nodes),
                next: None,
                pending: None,
            })
            .collect();
        Sim {
            restart_at: vec![None; ids.len()],
            roles: vec![(Role::Follower, 0); ids.len()],
            rng,
            faults,
            healing: false,
            slow_disk,
            now: 0,
            ids,
            nodes,
            net: Network::default(),
            partition_until: None,
            clients,
            history: History::new(),
            clock: 0,
            next_value: 1,
            next_ctx: 1,
            writes: HashMap::new(),
            reads: HashMap::new(),
            acked: Vec::new(),
            snapshots: HashMap::new(),
            committed_config: (0, membership.clone()),
            joining_until: vec![0; cfg.nodes as usize],
            inv: Invariants::default(),
            stats: Stats::default(),
            hash: 0xcbf2_9ce4_8422_2325,
            trace: Vec::new(),
            cfg,
        }
    }

    fn note(&mut self, words: &[u64], text: impl FnOnce() -> String) {
        for &w in words {
            self.hash = (self.hash ^ w).wrapping_mul(0x0000_0100_0000_01B3);
        }
        if self.cfg.verbose {
            let line = format!("[{:>5}] {}", self.now, text());
            self.trace.push(line);
        }
    }

    fn node(&self, id: NodeId) -> &SimNode {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        &mut self.nodes[(id - 1) as usize]
    }

    fn run(&mut self) -> Result<(), String> {
        self.cfg.validate()?;
        if self.cfg.verbose {
            let faults = self.faults;
            self.note(&[], || format!("faults: {faults:?}"));
        }
        while self.now < self.cfg.fault_ticks {
            self.step()?;
        }
        self.heal();
        let start = self.now;
        loop {
            self.step()?;
            if self.converged() {
                break;
            }
            if self.now - start > self.cfg.heal_ticks {
                return Err(format!(
                    "liveness: no convergence {} ticks after healing (leaders: {:?}, clients \
                     waiting: {}; nodes: {})",
                    self.cfg.heal_ticks,
                    self.leaders(),
                    self.clients
                        .iter()
                        .filter(|c| c.pending.is_some() || c.next.is_some())
                        .count(),
                    self.describe_nodes()
                ));
            }
        }
        self.stats.heal_ticks = self.now - start;
        self.final_checks()?;
        self.collect_stats();
        Ok(())
    }

    fn collect_stats(&mut self) {
        self.stats.ticks = self.now;
        self.stats.dropped = self.net.dropped;
        self.stats.duplicated = self.net.duplicated;
        self.stats.delivered = self.net.delivered;
        self.stats.committed = self.inv.committed_count() as u64;
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .map(|r| r.id())
            .collect()
    }

    fn describe_nodes(&self) -> String {
        let mut out = Vec::new();
        for n in &self.nodes {
            out.push(match &n.raft {
                Some(r) => format!(
                    "{}: {} t{} commit {} applied {} members {:?}/{:?}{}",
                    n.id,
                    r.role(),
                    r.term(),
                    r.commit_index(),
                    r.applied_index(),
                    r.membership().voters,
                    r.membership().learners,
                    if r.membership().is_joint() {
                        " joint"
                    } else {
                        ""
                    }
                ),
                None => format!(
                    "{}: down{}",
                    n.id,
                    if n.decommissioned { " (removed)" } else { "" }
                ),
            });
        }
        out.join("; ")
    }

    /// Ends the fault phase: heal the network, restart crashed nodes, resume paused ones.
    fn heal(&mut self) {
        self.healing = true;
        // The faults stop; the protocol settings and the operator's habits (snapshots,
        // stopping removed nodes) stay. Membership changes and transfers stop too.
        self.faults = Faults {
            network: Faults::NONE.network,
            partition_per_mille: 0,
            crash_per_mille: 0,
            pause_per_mille: 0,
            max_disk_delay: Faults::NONE.max_disk_delay,
            tick_skew: false,
            transfer_per_mille: 0,
            ..self.faults
        };
        self.slow_disk = None;
        self.net.heal();
        self.partition_until = None;
        for id in self.ids.clone() {
            if !self.node(id).is_up() && !self.node(id).decommissioned {
                self.restart(id);
            }
            let now = self.now;
            if let Some(until) = self.node(id).paused_until
                && until > now
            {
                self.node_mut(id).paused_until = Some(now);
            }
        }
        self.note(&[7], || "heal: network healed, all nodes up".into());
    }

    /// After healing: a leader that committed in its term, every client done, every node
    /// caught up with the leader.
    fn converged(&self) -> bool {
        // One leader among the members of the committed configuration, in the newest term
        // any of them has reached, with every member caught up with it.
        let members: Vec<NodeId> = self.committed_config.1.members().collect();
        let rafts: Vec<_> = members
            .iter()
            .filter_map(|&id| self.node(id).raft.as_ref())
            .collect();
        if rafts.len() != members.len() {
            return false;
        }
        let max_term = rafts.iter().map(|r| r.term()).max().unwrap_or(0);
        let newest_commit = rafts.iter().map(|r| r.commit_index()).max().unwrap_or(0);
        let leaders: Vec<_> = rafts.iter().filter(|r| r.role() == Role::Leader).collect();
        let [l] = leaders[..] else {
            return false;
        };
        l.term() == max_term
            && l.commit_index() >= newest_commit
            && l.committed_in_current_term()
            && self
                .clients
                .iter()
                .all(|c| c.pending.is_none() && c.next.is_none())
            && rafts.iter().all(|r| r.applied_index() >= l.commit_index())
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += 1;
        if !self.healing {
            self.inject_faults();
        }
        self.resume_and_restart();
        self.deliver()?;
        for id in self.ids.clone() {
            if self.node(id).is_running(self.now) {
                let now = self.now;
                self.node_mut(id).complete_writes(now)?;
            }
        }
        self.tick_nodes();
        self.clients_act();
        for id in self.ids.clone() {
            self.process(id)?;
        }
        self.check_step()
    }

    // ----- faults ------------------------------------------------------------------------------

    fn inject_faults(&mut self) {
        let now = self.now;
        if let Some(until) = self.partition_until
            && until <= now
        {
            self.net.heal();
            self.partition_until = None;
            self.note(&[1], || "partition healed".into());
        }
        if self.partition_until.is_none() && self.rng.chance(self.faults.partition_per_mille) {
            self.start_partition();
        }
        if self.rng.chance(self.faults.crash_per_mille) {
            let up: Vec<NodeId> = self
                .ids
                .iter()
                .copied()
                .filter(|&id| self.node(id).is_up())
                .collect();
            if up.len() > 1
                && let Some(id) = self.rng.pick(&up)
            {
                self.crash(id);
            }
        }
        if self.faults.membership_changes && !self.healing && self.rng.chance(15) {
            self.change_membership();
        }
        if self.rng.chance(self.faults.transfer_per_mille) {
            self.transfer_leadership();
        }
        if self.rng.chance(self.faults.pause_per_mille) {
            let running: Vec<NodeId> = self
                .ids
                .iter()
                .copied()
                .filter(|&id| self.node(id).is_running(now))
                .collect();
            if let Some(id) = self.rng.pick(&running) {
                let len = self.rng.between(5, 40);
                self.node_mut(id).paused_until = Some(now + len);
                self.stats.pauses += 1;
                self.note(&[2, id, len], || format!("pause node {id} for {len} ticks"));
            }
        }
    }

    fn start_partition(&mut self) {
        let ids = self.ids.clone();
        let len = self.rng.between(5, 80);
        let kind = self.rng.below(4);
        let desc = match kind {
            0 => {
                // Isolate the leader (or a random node).
                let target = self
                    .leaders()
                    .first()
                    .copied()
                    .unwrap_or_else(|| 1 + self.rng.below(self.cfg.nodes));
                self.net.partition(&[target], &ids);
                format!("isolate node {target}")
            }
            1 => {
                // A random minority | majority split.
                let size = self.rng.between(1, (self.cfg.nodes - 1) / 2);
                let mut side = Vec::new();
                while (side.len() as u64) < size {
                    let id = 1 + self.rng.below(self.cfg.nodes);
                    if !side.contains(&id) {
                        side.push(id);
                    }
                }
                self.net.partition(&side, &ids);
                format!("split {side:?} from the rest")
            }
            2 => {
                // One-way: a node's outgoing (or incoming) links are cut.
                let id = 1 + self.rng.below(self.cfg.nodes);
                let outgoing = self.rng.chance(500);
                for &other in &ids {
                    if other != id {
                        if outgoing {
                            self.net.block(id, other);
                        } else {
                            self.net.block(other, id);
                        }
                    }
                }
                format!(
                    "one-way: node {id} {}",
                    if outgoing {
                        "cannot send"
                    } else {
                        "cannot receive"
                    }
                )
            }
            _ => {
                // Partial: a bridge node sees both halves, which do not see each other.
                let bridge = 1 + self.rng.below(self.cfg.nodes);
                let others: Vec<NodeId> = ids.iter().copied().filter(|&i| i != bridge).collect();
                let half = others.len() / 2;
                let (a, b) = others.split_at(half);
                for &x in a {
                    for &y in b {
                        self.net.block(x, y);
                        self.net.block(y, x);
                    }
                }
                format!("bridge: node {bridge} links {a:?} and {b:?}")
            }
        };
        self.partition_until = Some(self.now + len);
        self.stats.partitions += 1;
        self.note(&[3, kind, len], || {
            format!("partition for {len} ticks: {desc}")
        });
    }

    fn crash(&mut self, id: NodeId) {
        self.node_mut(id).crash();
        for m in self.net.drop_to(id) {
            self.snapshot_outcome(&m, false);
        }
        // Quick restarts matter: a node back within an election can vote again in a term it
        // voted in before the crash.
        let downtime = if self.rng.chance(500) {
            self.rng.between(1, 8)
        } else {
            self.rng.between(8, 100)
        };
        self.restart_at[(id - 1) as usize] = Some(self.now + downtime);
        self.stats.crashes += 1;
        self.note(&[4, id], || {
            format!("crash node {id} (down for {downtime} ticks)")
        });
        // Clients waiting on it never hear back: writes become unknown, reads are dropped.
        for c in 0..self.clients.len() {
            if let Some(p) = self.clients[c].pending
                && p.node == id
            {
                self.give_up(c);
            }
        }
    }

    fn restart(&mut self, id: NodeId) {
        self.restart_at[(id - 1) as usize] = None;
        let bugs = self.cfg.bugs.clone();
        let node = self.node_mut(id);
        node.restart();
        if let Some(raft) = node.raft.as_mut() {
            for bug in bugs {
                raft.inject_bug(bug);
            }
        }
        self.roles[(id - 1) as usize] = (Role::Follower, 0);
        self.note(&[5, id], || format!("restart node {id}"));
    }

    fn resume_and_restart(&mut self) {
        let now = self.now;
        for id in self.ids.clone() {
            if self.restart_at[(id - 1) as usize].is_some_and(|t| t <= now)
                && !self.node(id).decommissioned
            {
                self.restart(id);
            }
            let node = self.node_mut(id);
            if node.paused_until.is_some_and(|t| t <= now) {
                node.paused_until = None;
                // The runtime's clock kept running while the process was stopped: it catches
                // up on the missed ticks before handling anything else.
                let missed = std::mem::take(&mut node.missed_ticks);
                if let Some(raft) = node.raft.as_mut() {
                    for _ in 0..missed {
                        raft.tick();
                    }
                }
                self.note(&[6, id, missed], || {
                    format!("resume node {id} (+{missed} ticks)")
                });
            }
        }
    }

    fn tick_nodes(&mut self) {
        let now = self.now;
        for node in &mut self.nodes {
            if !node.is_up() {
                continue;
            }
            if !node.is_running(now) {
                node.missed_ticks += 1;
                continue;
            }
            if node.skew_period > 0 && now.is_multiple_of(node.skew_period) {
                continue; // this clock runs slightly slow
            }
            if let Some(raft) = node.raft.as_mut() {
                raft.tick();
            }
        }
    }

    // ----- messages and readies ----------------------------------------------------------------

    fn deliver(&mut self) -> Result<(), String> {
        let now = self.now;
        let nodes = &self.nodes;
        let (due, lost) = self.net.due(now, |to| {
            nodes
                .get((to - 1) as usize)
                .is_some_and(|n| n.is_up() && !n.is_running(now))
        });
        for m in &lost {
            self.snapshot_outcome(m, false);
        }
        for m in due {
            let delivered_to = self.node(m.to).is_up();
            self.snapshot_outcome(&m, delivered_to);
            let (from, to, term) = (m.from, m.to, m.term);
            let kind = m.body.kind();
            self.note(&[8, from, to, term], || {
                format!("deliver {kind} {from}->{to} t{term}")
            });
            let Some(raft) = self.node_mut(to).raft.as_mut() else {
                continue; // recipient crashed: lost
            };
            raft.step(m)
                .map_err(|e| format!("node {to} refused a routed message: {e}"))?;
        }
        Ok(())
    }

    /// Carries out every ready of node `id` (persist, send, apply, reads).
    fn process(&mut self, id: NodeId) -> Result<(), String> {
        for _ in 0..10_000 {
            let now = self.now;
            if !self.node(id).is_running(now) {
                return Ok(());
            }
            let Some(raft) = self.node_mut(id).raft.as_mut() else {
                return Ok(());
            };
            if !raft.has_ready() {
                return Ok(());
            }
            let ready = raft.ready();
            if let Some(e) = ready.storage_errors.first() {
                return Err(format!("node {id}: storage error: {e}"));
            }
            if let Some(soft) = ready.soft_state {
                self.on_role(id, soft.role, soft.term)?;
            }
            for m in ready.messages {
                let faults = self.faults.network;
                if let Some(lost) = self.net.send(m, now, &faults, &mut self.rng) {
                    self.snapshot_outcome(&lost, false);
                }
            }
            if let Some(write) = ready.persist {
                let mut delay = self.rng.below(self.faults.max_disk_delay + 1);
                if self.slow_disk == Some(id) {
                    delay = delay * 4 + 4;
                }
                let node = self.node_mut(id);
                node.submit_write(write, now + delay);
                node.complete_writes(now)?;
            }
            if let Some(to) = ready.compact_log_to {
                self.node_mut(id).compact(to)?;
            }
            if let Some(meta) = ready.snapshot_to_install {
                let last = meta.last_included;
                self.nodes[(id - 1) as usize].install_from(meta, &self.snapshots)?;
                self.note(&[12, id, last.index], || {
                    format!("node {id} installs snapshot {last}")
                });
            }
            if !ready.committed_entries.is_empty() {
                let max_term = invariants::max_term(&self.nodes);
                for e in &ready.committed_entries {
                    self.inv
                        .applied(id, e.id(), entry_hash(&e.payload), max_term)?;
                    if let EntryPayload::Membership(m) = &e.payload
                        && e.index > self.committed_config.0
                    {
                        self.committed_config = (e.index, m.clone());
                    }
                }
                let applied = self.node_mut(id).apply(&ready.committed_entries);
                for a in applied {
                    self.on_applied(id, a.id, a.effect);
                }
                if let Some(every) = self.faults.snapshot_every
                    && let Some(meta) = self.node_mut(id).maybe_snapshot(every)
                {
                    self.record_snapshot(id, meta.last_included)?;
                }
            }
            for r in ready.read_states {
                self.on_read(id, r.ctx, true);
            }
            for f in ready.failed_reads {
                self.on_read(id, f.ctx, false);
            }
        }
        Err(format!("node {id}: ready loop did not settle"))
    }

    fn on_role(&mut self, id: NodeId, role: Role, term: u64) -> Result<(), String> {
        let slot = (id - 1) as usize;
        if role == Role::Leader && self.roles[slot] != (Role::Leader, term) {
            self.stats.elections += 1;
            invariants::new_leader(&mut self.inv, &self.nodes[slot], term)?;
            self.note(&[9, id, term], || format!("node {id} leads term {term}"));
        }
        self.roles[slot] = (role, term);
        Ok(())
    }

    fn check_step(&mut self) -> Result<(), String> {
        let now = self.now;
        if self.faults.membership_changes {
            self.decommission_removed();
        }
        invariants::live_nodes(&mut self.inv, &self.nodes)?;
        if now.is_multiple_of(32) {
            invariants::all_logs_match(&self.nodes)?;
        }
        Ok(())
    }

    fn final_checks(&mut self) -> Result<(), String> {
        invariants::all_logs_match(&self.nodes)?;
        // Durability: after every crash and restart, every write a client was told succeeded
        // is still in every node's log (all nodes are up and caught up by now).
        let members: Vec<NodeId> = self.committed_config.1.members().collect();
        for &id in &self.acked {
            for node in self.nodes.iter().filter(|n| members.contains(&n.id)) {
                let Some(raft) = node.raft.as_ref() else {
                    continue;
                };
                if id.index < raft.log_reader().first_index() {
                    continue; // compacted into a snapshot
                }
                let term = raft.log_term(id.index).ok();
                if term != Some(id.term) {
                    return Err(format!(
                        "durability: acknowledged write {id} is missing from node {} (term \
                         there: {term:?}; log {}..={}; nodes: {})",
                        node.id,
                        raft.log_reader().first_index(),
                        raft.log_reader().last_index(),
                        self.describe_nodes()
                    ));
                }
            }
        }
        self.stats.ops_checked = self.history.len() as u64;
        match linearizability::check(&self.history) {
            Verdict::Linearizable => Ok(()),
            verdict => Err(format!("linearizability: {verdict}")),
        }
    }

    // ----- membership, transfers, snapshots ----------------------------------------------------

    /// Asks the leader for a random membership change: a joint change to a random voter set
    /// (grow, shrink, replace), or a single-server change (add or promote a learner, add or
    /// remove a node — the leader included).
    fn change_membership(&mut self) {
        use dengine_core::MembershipChange::{AddLearner, AddVoter, Remove};
        let Some(&leader) = self.leaders().first() else {
            return;
        };
        let Some(raft) = self.node(leader).raft.as_ref() else {
            return;
        };
        let m = raft.membership().clone();
        let outsiders: Vec<NodeId> = self
            .ids
            .iter()
            .copied()
            .filter(|&i| !m.contains(i))
            .collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let voters: Vec<NodeId> = m.voters.iter().copied().collect();
        let (joint, changes) = match self.rng.below(5) {
            0 => {
                let size = self.rng.between(3, self.cfg.nodes.min(5));
                let mut target = Vec::new();
                while (target.len() as u64) < size {
                    let id = 1 + self.rng.below(self.cfg.nodes);
                    if !target.contains(&id) {
                        target.push(id);
                    }
                }
                let mut changes: Vec<_> = voters
                    .iter()
                    .filter(|v| !target.contains(v))
                    .map(|&v| Remove(v))
                    .collect();
                changes.extend(
                    target
                        .iter()
                        .filter(|t| !m.voters.contains(t))
                        .map(|&t| AddVoter(t)),
                );
                (true, changes)
            }
            1 => match self.rng.pick(&outsiders) {
                Some(id) => (false, vec![AddLearner(id)]),
                None => return,
            },
            2 => match self.rng.pick(&learners) {
                Some(id) => (false, vec![AddVoter(id)]),
                None => return,
            },
            3 if voters.len() > 3 => match self.rng.pick(&voters) {
                Some(id) => (false, vec![Remove(id)]),
                None => return,
            },
            3 => match self.rng.pick(&learners) {
                Some(id) => (false, vec![Remove(id)]),
                None => return,
            },
            _ => match self.rng.pick(&outsiders) {
                Some(id) => (false, vec![AddVoter(id)]),
                None => return,
            },
        };
        if changes.is_empty() {
            return;
        }
        // Nodes being added are started (again) first, as an operator would.
        for c in &changes {
            if let AddVoter(id) | AddLearner(id) = *c {
                self.joining_until[(id - 1) as usize] = self.now + 300;
                if self.node(id).decommissioned {
                    self.node_mut(id).decommissioned = false;
                    if !self.node(id).is_up() {
                        self.restart(id);
                    }
                }
            }
        }
        let Some(raft) = self.node_mut(leader).raft.as_mut() else {
            return;
        };
        let result = if joint {
            raft.change_membership(&changes)
        } else {
            raft.change_membership_single(changes[0])
        };
        if let Ok(id) = result {
            self.note(&[13, leader, id.index], || {
                format!("leader {leader} proposes membership change {changes:?} at {id}")
            });
        }
    }

    /// Stops nodes that are not members of the committed configuration (removed ones would
    /// otherwise keep asking for votes with a configuration nobody else uses); they are
    /// started again when added back.
    fn decommission_removed(&mut self) {
        // A node is wanted while it is a member of the committed configuration or of the
        // configuration any of those members is using (a change in progress), or while it is
        // being added.
        let now = self.now;
        let committed: Vec<NodeId> = self.committed_config.1.members().collect();
        let mut wanted = committed.clone();
        for &id in &committed {
            if let Some(r) = self.node(id).raft.as_ref() {
                wanted.extend(r.membership().members());
            }
        }
        for id in self.ids.clone() {
            let slot = (id - 1) as usize;
            let want = wanted.contains(&id) || self.joining_until[slot] > now;
            let node = self.node(id);
            if want && node.decommissioned {
                self.node_mut(id).decommissioned = false;
                self.restart(id);
            } else if !want && !node.decommissioned && !self.committed_config.1.is_joint() {
                if node.is_up() {
                    self.node_mut(id).crash();
                    for m in self.net.drop_to(id) {
                        self.snapshot_outcome(&m, false);
                    }
                }
                self.node_mut(id).decommissioned = true;
                self.restart_at[slot] = None;
                self.note(&[14, id], || format!("node {id} is not a member: stopped"));
            }
        }
    }

    fn transfer_leadership(&mut self) {
        let Some(&leader) = self.leaders().first() else {
            return;
        };
        let Some(raft) = self.node(leader).raft.as_ref() else {
            return;
        };
        let voters: Vec<NodeId> = raft
            .membership()
            .voters
            .iter()
            .copied()
            .filter(|&v| v != leader)
            .collect();
        let Some(to) = self.rng.pick(&voters) else {
            return;
        };
        if let Some(raft) = self.node_mut(leader).raft.as_mut()
            && raft.transfer_leader(to).is_ok()
        {
            self.note(&[15, leader, to], || {
                format!("leader {leader} transfers leadership to {to}")
            });
        }
    }

    /// The transport tells the sender of a snapshot whether it arrived (a stream completing
    /// or failing, in a real runtime).
    fn snapshot_outcome(&mut self, m: &dengine_core::Message, delivered: bool) {
        if !matches!(m.body, dengine_core::MessageBody::InstallSnapshot(_)) {
            return;
        }
        if let Some(raft) = self.node_mut(m.from).raft.as_mut() {
            raft.report_snapshot(m.to, delivered);
        }
    }

    /// Keeps a snapshot's data for followers that will need it, and checks that every node's
    /// snapshot at the same entry holds the same state (state machine safety).
    fn record_snapshot(&mut self, node: NodeId, last: EntryId) -> Result<(), String> {
        let Some((_, kv)) = self.node(node).snapshot.clone() else {
            return Ok(());
        };
        if invariants::snapshot_taken(&mut self.snapshots, node, last, kv)? {
            self.note(&[16, node, last.index], || {
                format!("node {node} snapshots at {last}")
            });
        }
        Ok(())
    }

    // ----- clients -----------------------------------------------------------------------------

    fn new_op(&mut self, client: usize) -> (u64, Op) {
        let key = self.rng.below(self.cfg.keys);
        let op = match self.rng.below(100) {
            0..=39 => {
                self.next_value += 1;
                Op::Put {
                    value: self.next_value,
                }
            }
            40..=64 => {
                self.next_value += 1;
                let expected = match self.rng.below(3) {
                    0 => None,
                    _ => Some(self.next_value.saturating_sub(1 + self.rng.below(4))),
                };
                Op::Cas {
                    expected,
                    new: self.next_value,
                }
            }
            _ => Op::Get,
        };
        let _ = client;
        (key, op)
    }

    fn clients_act(&mut self) {
        let now = self.now;
        for c in 0..self.clients.len() {
            if let Some(p) = self.clients[c].pending {
                if p.deadline <= now {
                    self.give_up(c);
                }
                continue;
            }
            if self.clients[c].next.is_none() {
                // In the healing phase clients only finish what they started.
                if self.healing || !self.rng.chance(300) {
                    continue;
                }
                let op = self.new_op(c);
                self.clients[c].next = Some(op);
            }
            self.submit(c);
        }
    }

    fn submit(&mut self, c: usize) {
        let Some((key, op)) = self.clients[c].next else {
            return;
        };
        let now = self.now;
        let target = self.clients[c].target;
        let node = &mut self.nodes[(target - 1) as usize];
        let incarnation = node.incarnation;
        let running = node.is_running(now);
        let raft = match node.raft.as_mut() {
            Some(r) if running => r,
            _ => {
                // Connection refused or timed out at once: try another node next time.
                self.clients[c].target = 1 + self.rng.below(self.cfg.nodes);
                return;
            }
        };
        let wait = match op {
            Op::Get => {
                let ctx = self.next_ctx;
                let mode = if self.rng.chance(500) {
                    ReadMode::Lease
                } else {
                    ReadMode::ReadIndex
                };
                match raft.read_index(ctx, mode) {
                    Ok(()) => {
                        self.next_ctx += 1;
                        self.reads.insert((target, ctx), c);
                        Wait::Read(ctx)
                    }
                    Err(_) => {
                        let hint = raft.leader();
                        self.redirect(c, hint);
                        return;
                    }
                }
            }
            Op::Put { value } => match raft.propose(Command::Put { key, value }.encode()) {
                Ok(id) => Wait::Write(id),
                Err(e) => {
                    self.rejected(c, e);
                    return;
                }
            },
            Op::Cas { expected, new } => {
                match raft.propose(Command::Cas { key, expected, new }.encode()) {
                    Ok(id) => Wait::Write(id),
                    Err(e) => {
                        self.rejected(c, e);
                        return;
                    }
                }
            }
        };
        if let Wait::Write(id) = wait {
            self.writes.insert((target, id.index), c);
        }
        self.clock += 1;
        self.clients[c].next = None;
        self.clients[c].pending = Some(Pending {
            key,
            op,
            invoke: self.clock,
            deadline: now + self.cfg.op_timeout,
            node: target,
            incarnation,
            wait,
        });
        let cid = self.clients[c].id;
        self.note(&[10, cid, target, key], || {
            format!("client {cid} invokes {op:?} on key {key} at node {target}")
        });
    }

    fn rejected(&mut self, c: usize, e: ProposeError) {
        match e {
            ProposeError::NotLeader { leader, .. } => self.redirect(c, leader),
            // Leadership is moving: try the new leader.
            ProposeError::TransferInProgress { to } => self.redirect(c, Some(to)),
            // Back-pressure: retry later on the same node.
            ProposeError::UncommittedLimit { .. } | ProposeError::TooLarge { .. } => {}
        }
    }

    fn redirect(&mut self, c: usize, leader: Option<NodeId>) {
        self.clients[c].target = leader.unwrap_or_else(|| 1 + self.rng.below(self.cfg.nodes));
    }

    /// The client stops waiting: a write's outcome is unknown; a read is simply dropped.
    fn give_up(&mut self, c: usize) {
        let Some(p) = self.clients[c].pending.take() else {
            return;
        };
        match p.wait {
            Wait::Write(id) => {
                self.writes.remove(&(p.node, id.index));
                let client = self.clients[c].id;
                self.record(client, p, Outcome::Unknown);
                self.stats.ops_unknown += 1;
            }
            Wait::Read(ctx) => {
                self.reads.remove(&(p.node, ctx));
            }
        }
        self.redirect(c, None);
    }

    fn record(&mut self, client: u64, p: Pending, outcome: Outcome) {
        // Invariant: outcomes match their operations by construction (checked in tests).
        let _ = self.history.push(Operation {
            client,
            key: p.key,
            op: p.op,
            invoke: p.invoke,
            outcome,
        });
    }

    fn complete(&mut self, c: usize, result: OpResult) {
        let Some(p) = self.clients[c].pending.take() else {
            return;
        };
        self.clock += 1;
        let at = self.clock;
        let client = self.clients[c].id;
        self.note(&[11, client, p.key], || {
            format!(
                "client {client} completes {:?} on key {}: {result:?}",
                p.op, p.key
            )
        });
        self.record(client, p, Outcome::Completed { at, result });
        self.stats.ops_ok += 1;
    }

    fn on_applied(&mut self, node: NodeId, id: EntryId, effect: Option<bool>) {
        let Some(c) = self.writes.remove(&(node, id.index)) else {
            return;
        };
        let Some(p) = self.clients[c].pending else {
            return;
        };
        let Wait::Write(want) = p.wait else {
            return;
        };
        if p.node != node || p.incarnation != self.node(node).incarnation || want.index != id.index
        {
            return;
        }
        if want != id {
            // Another entry won this index: ours was never committed and never will be. The
            // client may safely retry it as a new operation.
            self.clients[c].pending = None;
            self.clients[c].next = Some((p.key, p.op));
            self.redirect(c, None);
            return;
        }
        self.acked.push(id);
        let result = match p.op {
            Op::Put { .. } => OpResult::Put,
            Op::Cas { .. } => OpResult::Cas(effect.unwrap_or(false)),
            Op::Get => return,
        };
        self.complete(c, result);
    }

    fn on_read(&mut self, node: NodeId, ctx: ReadCtx, ok: bool) {
        let Some(c) = self.reads.remove(&(node, ctx)) else {
            return;
        };
        let Some(p) = self.clients[c].pending else {
            return;
        };
        if !ok {
            self.clients[c].pending = None;
            self.clients[c].next = Some((p.key, p.op));
            let hint = self.node(node).raft.as_ref().and_then(|r| r.leader());
            self.redirect(c, hint);
            return;
        }
        let value = self.node(node).kv.get(p.key);
        self.complete(c, OpResult::Get(value));
    }
}
