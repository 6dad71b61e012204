//! The protocol fuzzer's driver: a cluster of real `dengine-core` nodes ([`SimNode`]) run by a
//! schedule read from arbitrary bytes instead of a seeded random generator, so a coverage-guided
//! fuzzer (`cargo xtask fuzz protocol`) steers it toward schedules no seed reaches.
//!
//! Each step of the schedule is one action: tick a node, deliver, drop, duplicate or reorder a
//! message in flight, complete a node's pending disk writes, propose, crash or restart a node,
//! start an election, read, change the membership, transfer leadership, take a snapshot, or
//! deliver a *forged* copy of a message (a field changed). After every action each running node's
//! `Ready` is carried out and the simulator's safety invariants are checked: Election Safety,
//! State Machine Safety, Leader Completeness, monotonic commit and applied indexes, Log Matching.
//!
//! Raft tolerates crashes, loss, duplication and reordering, not lies: once a forged message has
//! been delivered the safety invariants no longer apply, and the oracle is only that nothing
//! panics, spins or reports a storage error. (Peers are authenticated at the transport, see
//! docs/operations.md, "Securing a cluster"; the core must still survive whatever a buggy or
//! compromised peer sends.)

use std::collections::HashMap;

use bytes::Bytes;
use dengine_core::{
    Config, EntryId, Membership, MembershipChange, Message, MessageBody, NodeId, ReadMode, Role,
};

use crate::invariants::{self, Invariants, entry_hash};
use crate::kv::KvStore;
use crate::node::SimNode;

/// Actions per input at most (a longer input is cut).
const MAX_ACTIONS: usize = 4096;
/// Messages in flight at most (older ones are dropped: a lossy network).
const MAX_IN_FLIGHT: usize = 1024;
/// The voters of the initial configuration; node 4 starts outside the cluster.
const VOTERS: [NodeId; 3] = [1, 2, 3];
const NODES: u64 = 4;

/// Reads the fuzzer's bytes as small numbers; past the end it yields zeros.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A number in `0..n` (`n > 0`) from the next byte.
    pub fn below(&mut self, n: u64) -> u64 {
        u64::from(self.byte()) % n.max(1)
    }

    /// A little-endian `u64` from the next 8 bytes.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }

    /// A little-endian `u16` from the next 2 bytes.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next `len` bytes (fewer at the end).
    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// The actions of a schedule, one byte each (then their arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Tick,
    Deliver,
    Drop,
    Duplicate,
    DeliverAll,
    CompleteWrites,
    Propose,
    Crash,
    Restart,
    Campaign,
    Read,
    ChangeMembership,
    Transfer,
    Snapshot,
    Forge,
}

const ACTIONS: [Action; 15] = [
    Action::Tick,
    Action::Deliver,
    Action::Drop,
    Action::Duplicate,
    Action::DeliverAll,
    Action::CompleteWrites,
    Action::Propose,
    Action::Crash,
    Action::Restart,
    Action::Campaign,
    Action::Read,
    Action::ChangeMembership,
    Action::Transfer,
    Action::Snapshot,
    Action::Forge,
];

/// Runs the schedule in `data`. `Err` names the broken invariant (a bug in the core, or in
/// this driver); a panic inside the core is a bug too and is left to propagate.
pub fn protocol(data: &[u8]) -> Result<(), String> {
    let mut input = Input::new(data);
    let mut cluster = Cluster::new(input.u64());
    for _ in 0..MAX_ACTIONS {
        if input.is_empty() {
            break;
        }
        cluster.act(&mut input)?;
        cluster.settle()?;
        cluster.check()?;
    }
    cluster.finish()
}

/// A few schedules that reach elections, replication, snapshots and membership changes: the
/// committed seed corpus of `cargo xtask fuzz protocol`.
pub fn protocol_seeds() -> Vec<Vec<u8>> {
    let seed = |s: u8| vec![s, 0, 0, 0, 0, 0, 0, 0];
    let action = |a: Action| ACTIONS.iter().position(|&x| x == a).unwrap_or(0) as u8;
    let mut elect = seed(1);
    // Node 1 campaigns; every message and write is carried out until the election is won.
    elect.extend([action(Action::Campaign), 0]);
    for _ in 0..6 {
        elect.extend([
            action(Action::CompleteWrites),
            0,
            action(Action::DeliverAll),
        ]);
        elect.extend([
            action(Action::CompleteWrites),
            1,
            action(Action::CompleteWrites),
            2,
        ]);
    }
    let mut replicate = elect.clone();
    for i in 0..8u8 {
        replicate.extend([action(Action::Propose), 0, 3, b'a' + i, b'b', b'c']);
        for _ in 0..3 {
            replicate.extend([
                action(Action::DeliverAll),
                action(Action::CompleteWrites),
                0,
            ]);
            replicate.extend([
                action(Action::CompleteWrites),
                1,
                action(Action::CompleteWrites),
                2,
            ]);
        }
    }
    let mut snapshot = replicate.clone();
    snapshot.extend([action(Action::Snapshot), 0, action(Action::Crash), 2]);
    snapshot.extend([action(Action::Restart), 2, action(Action::Tick), 0, 5]);
    snapshot.extend([
        action(Action::DeliverAll),
        action(Action::CompleteWrites),
        2,
    ]);
    let mut membership = replicate.clone();
    membership.extend([action(Action::ChangeMembership), 0, 3, 0, 0]);
    for _ in 0..6 {
        membership.extend([
            action(Action::DeliverAll),
            action(Action::CompleteWrites),
            0,
        ]);
        membership.extend([
            action(Action::CompleteWrites),
            1,
            action(Action::CompleteWrites),
            3,
        ]);
    }
    membership.extend([action(Action::Transfer), 0, 1, action(Action::DeliverAll)]);
    let mut chaos = replicate.clone();
    chaos.extend([action(Action::Duplicate), 0, action(Action::Forge), 1, 2, 3]);
    chaos.extend([action(Action::Crash), 0, action(Action::Tick), 1, 15]);
    chaos.extend([action(Action::DeliverAll), action(Action::Read), 1, 1]);
    vec![elect, replicate, snapshot, membership, chaos]
}

struct Cluster {
    nodes: Vec<SimNode>,
    /// Messages sent and not yet delivered, in send order.
    net: Vec<Message>,
    inv: Invariants,
    /// Snapshot data by the entry it ends at (what a leader would stream to a follower).
    snapshots: HashMap<EntryId, KvStore>,
    /// Each node's last reported (role, term).
    roles: Vec<(Role, u64)>,
    /// A forged message was delivered: safety no longer applies.
    forged: bool,
    next_read: u64,
}

impl Cluster {
    fn new(seed: u64) -> Self {
        let membership = Membership::new(VOTERS);
        let nodes = (1..=NODES)
            .map(|id| {
                let mut config = Config::new(id);
                config.seed = seed.wrapping_add(id);
                let m = if VOTERS.contains(&id) {
                    membership.clone()
                } else {
                    Membership::default()
                };
                SimNode::new(config, m, 0)
            })
            .collect();
        Cluster {
            nodes,
            net: Vec::new(),
            inv: Invariants::default(),
            snapshots: HashMap::new(),
            roles: vec![(Role::Follower, 0); NODES as usize],
            forged: false,
            next_read: 1,
        }
    }

    fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        &mut self.nodes[(id - 1) as usize]
    }

    fn pick_node(input: &mut Input<'_>) -> NodeId {
        input.below(NODES) + 1
    }

    fn pick_message(&mut self, input: &mut Input<'_>) -> Option<Message> {
        if self.net.is_empty() {
            return None;
        }
        let i = input.below(self.net.len() as u64) as usize;
        Some(self.net.remove(i))
    }

    fn act(&mut self, input: &mut Input<'_>) -> Result<(), String> {
        let action = ACTIONS[input.below(ACTIONS.len() as u64) as usize];
        match action {
            Action::Tick => {
                let id = Self::pick_node(input);
                let n = input.below(16) + 1;
                if let Some(raft) = self.node_mut(id).raft.as_mut() {
                    for _ in 0..n {
                        raft.tick();
                    }
                }
            }
            Action::Deliver => {
                if let Some(m) = self.pick_message(input) {
                    self.deliver(m, false)?;
                }
            }
            Action::Drop => {
                if let Some(m) = self.pick_message(input) {
                    self.report_snapshot(&m, false);
                }
            }
            Action::Duplicate => {
                if let Some(m) = self.pick_message(input) {
                    self.net.push(m.clone());
                    self.deliver(m, false)?;
                }
            }
            Action::DeliverAll => {
                let all = std::mem::take(&mut self.net);
                for m in all {
                    self.deliver(m, false)?;
                }
            }
            Action::CompleteWrites => {
                let id = Self::pick_node(input);
                self.node_mut(id).complete_writes(u64::MAX)?;
            }
            Action::Propose => {
                let id = Self::pick_node(input);
                let len = input.below(16) as usize;
                let data = Bytes::copy_from_slice(input.bytes(len));
                if let Some(raft) = self.node_mut(id).raft.as_mut() {
                    let _ = raft.propose(data);
                }
            }
            Action::Crash => {
                let id = Self::pick_node(input);
                self.node_mut(id).crash();
            }
            Action::Restart => {
                let id = Self::pick_node(input);
                let node = self.node_mut(id);
                if !node.is_up() {
                    node.restart();
                }
            }
            Action::Campaign => {
                let id = Self::pick_node(input);
                if let Some(raft) = self.node_mut(id).raft.as_mut() {
                    raft.campaign();
                }
            }
            Action::Read => {
                let id = Self::pick_node(input);
                let mode = if input.byte() & 1 == 0 {
                    ReadMode::ReadIndex
                } else {
                    ReadMode::Lease
                };
                let ctx = self.next_read;
                self.next_read += 1;
                if let Some(raft) = self.node_mut(id).raft.as_mut() {
                    let _ = raft.read_index(ctx, mode);
                }
            }
            Action::ChangeMembership => {
                let id = Self::pick_node(input);
                let target = Self::pick_node(input);
                let change = match input.below(3) {
                    0 => MembershipChange::AddLearner(target),
                    1 => MembershipChange::AddVoter(target),
                    _ => MembershipChange::Remove(target),
                };
                let joint = input.byte() & 1 == 1;
                if let Some(raft) = self.node_mut(id).raft.as_mut() {
                    let _ = if joint {
                        raft.change_membership(&[change])
                    } else {
                        raft.change_membership_single(change)
                    };
                }
            }
            Action::Transfer => {
                let id = Self::pick_node(input);
                let to = Self::pick_node(input);
                if let Some(raft) = self.node_mut(id).raft.as_mut() {
                    let _ = raft.transfer_leader(to);
                }
            }
            Action::Snapshot => {
                let id = Self::pick_node(input);
                if let Some(meta) = self.node_mut(id).maybe_snapshot(1) {
                    self.record_snapshot(id, meta.last_included)?;
                }
            }
            Action::Forge => {
                if let Some(mut m) = self.pick_message(input) {
                    forge(&mut m, input);
                    self.deliver(m, true)?;
                }
            }
        }
        if self.net.len() > MAX_IN_FLIGHT {
            let excess = self.net.len() - MAX_IN_FLIGHT;
            let lost: Vec<Message> = self.net.drain(..excess).collect();
            for m in &lost {
                self.report_snapshot(m, false);
            }
        }
        Ok(())
    }

    fn deliver(&mut self, m: Message, forged: bool) -> Result<(), String> {
        let to = m.to;
        if !(1..=NODES).contains(&to) {
            return Ok(());
        }
        let up = self.nodes[(to - 1) as usize].is_up();
        self.report_snapshot(&m, up);
        self.forged |= forged;
        let Some(raft) = self.node_mut(to).raft.as_mut() else {
            return Ok(());
        };
        if forged {
            // A forged message may be refused (wrong recipient, from itself); it must not panic.
            let _ = raft.step(m);
            return Ok(());
        }
        raft.step(m)
            .map_err(|e| format!("node {to} refused a routed message: {e}"))
    }

    fn report_snapshot(&mut self, m: &Message, delivered: bool) {
        if !matches!(m.body, MessageBody::InstallSnapshot(_)) || !(1..=NODES).contains(&m.from) {
            return;
        }
        if let Some(raft) = self.node_mut(m.from).raft.as_mut() {
            raft.report_snapshot(m.to, delivered);
        }
    }

    /// Carries out every node's readies until none is left.
    fn settle(&mut self) -> Result<(), String> {
        for id in 1..=NODES {
            self.process(id)?;
        }
        Ok(())
    }

    fn process(&mut self, id: NodeId) -> Result<(), String> {
        for _ in 0..1000 {
            let Some(raft) = self.node_mut(id).raft.as_mut() else {
                return Ok(());
            };
            if !raft.has_ready() {
                return Ok(());
            }
            let ready = raft.ready();
            if let Some(e) = ready.storage_errors.first() {
                if self.forged {
                    // A lie can make the core ask for entries its log does not hold; it must
                    // say so (as it did), and a runtime stops the node.
                    self.node_mut(id).crash();
                    return Ok(());
                }
                return Err(format!("node {id}: storage error: {e}"));
            }
            if let Some(soft) = ready.soft_state {
                self.on_role(id, soft.role, soft.term)?;
            }
            self.net.extend(ready.messages);
            if let Some(write) = ready.persist {
                // Durable only when the schedule says so (CompleteWrites); a crash loses it.
                self.node_mut(id).submit_write(write, 1);
            }
            if let Some(to) = ready.compact_log_to {
                self.node_mut(id).compact(to)?;
            }
            if let Some(meta) = ready.snapshot_to_install {
                let installed = self.nodes[(id - 1) as usize].install_from(meta, &self.snapshots);
                if let Err(e) = installed {
                    if !self.forged {
                        return Err(e);
                    }
                    // A lie can name a snapshot nobody took; a runtime stops the node.
                    self.node_mut(id).crash();
                    return Ok(());
                }
            }
            if !ready.committed_entries.is_empty() {
                if !self.forged {
                    let max_term = invariants::max_term(&self.nodes);
                    for e in &ready.committed_entries {
                        self.inv
                            .applied(id, e.id(), entry_hash(&e.payload), max_term)?;
                    }
                }
                self.node_mut(id).apply(&ready.committed_entries);
            }
        }
        Err(format!(
            "node {id}: its ready loop did not settle in 1000 turns"
        ))
    }

    fn on_role(&mut self, id: NodeId, role: Role, term: u64) -> Result<(), String> {
        let slot = (id - 1) as usize;
        if role == Role::Leader && self.roles[slot] != (Role::Leader, term) && !self.forged {
            invariants::new_leader(&mut self.inv, &self.nodes[slot], term)?;
        }
        self.roles[slot] = (role, term);
        Ok(())
    }

    fn record_snapshot(&mut self, node: NodeId, last: EntryId) -> Result<(), String> {
        let Some((_, kv)) = self.nodes[(node - 1) as usize].snapshot.clone() else {
            return Ok(());
        };
        if self.forged {
            self.snapshots.entry(last).or_insert(kv);
            return Ok(());
        }
        invariants::snapshot_taken(&mut self.snapshots, node, last, kv).map(|_| ())
    }

    /// The invariants that hold after every action (unless a lie was delivered).
    fn check(&mut self) -> Result<(), String> {
        if self.forged {
            return Ok(());
        }
        invariants::live_nodes(&mut self.inv, &self.nodes)
    }

    fn finish(&mut self) -> Result<(), String> {
        if self.forged {
            return Ok(());
        }
        invariants::all_logs_match(&self.nodes)
    }
}

/// Changes one field of `m`: what a buggy or lying peer could send.
fn forge(m: &mut Message, input: &mut Input<'_>) {
    let n = input.u16() as u64;
    match input.below(6) {
        0 => m.term = m.term.wrapping_add(n % 4),
        1 => m.term = m.term.saturating_sub(n % 4),
        2 => m.from = n % (NODES + 2),
        3 => m.to = n % (NODES + 2),
        _ => match &mut m.body {
            MessageBody::Append(a) => match n % 4 {
                0 => a.commit = a.commit.wrapping_add(n),
                1 => a.prev.index = a.prev.index.wrapping_add(n % 8),
                2 => a.prev.term = a.prev.term.wrapping_add(n % 3),
                _ => {
                    if let Some(e) = a.entries.last_mut() {
                        e.term = e.term.wrapping_add(n % 3);
                    }
                }
            },
            MessageBody::Heartbeat(h) => h.commit = h.commit.wrapping_add(n),
            MessageBody::VoteRequest(v) => {
                v.last_log.index = v.last_log.index.wrapping_add(n % 8);
                v.pre_vote = !v.pre_vote;
            }
            MessageBody::VoteResponse(v) => v.granted = !v.granted,
            MessageBody::AppendResponse(dengine_core::AppendResponse::Accepted { last }) => {
                last.index = last.index.wrapping_add(n % 8);
            }
            MessageBody::HeartbeatResponse(h) => h.log_end = Some(u64::from(n as u16)),
            MessageBody::ReadIndexResponse(r) => r.index = r.index.map(|i| i.wrapping_add(n)),
            _ => m.term = m.term.wrapping_add(1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    trait View {
        fn clone_view(&self) -> (Role, u64, Membership);
    }

    impl View for dengine_core::Raft<dengine_core::MemoryStore> {
        fn clone_view(&self) -> (Role, u64, Membership) {
            (self.role(), self.applied_index(), self.membership().clone())
        }
    }

    #[test]
    fn the_seeds_elect_replicate_and_hold_the_invariants() {
        for (i, seed) in protocol_seeds().iter().enumerate() {
            protocol(seed).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        }
    }

    fn run_seed(i: usize) -> Cluster {
        let seeds = protocol_seeds();
        let mut input = Input::new(&seeds[i]);
        let mut cluster = Cluster::new(input.u64());
        while !input.is_empty() {
            cluster.act(&mut input).unwrap();
            cluster.settle().unwrap();
            cluster.check().unwrap();
        }
        cluster
    }

    #[test]
    fn the_seeds_reach_what_they_are_for() {
        // Seed 0 elects node 1; seed 1 commits its 8 proposals (after the leader's blank
        // entry) everywhere; seed 2 snapshots; seed 3 adds node 4 as a learner.
        let raft = |c: &Cluster, id: usize| c.nodes[id - 1].raft.as_ref().unwrap().clone_view();
        let c = run_seed(0);
        assert_eq!(raft(&c, 1).0, Role::Leader);
        let c = run_seed(1);
        for id in 1..=3 {
            assert!(raft(&c, id).1 >= 9, "node {id} applied {}", raft(&c, id).1);
        }
        let c = run_seed(2);
        assert!(c.nodes[0].snapshot.is_some());
        let c = run_seed(3);
        assert!(raft(&c, 1).2.contains(4), "{:?}", raft(&c, 1).2);
    }

    #[test]
    fn a_broken_invariant_is_reported() {
        // Two leaders in one term, told to the checker directly: the driver's oracle is live.
        let mut cluster = Cluster::new(0);
        cluster.on_role(1, Role::Leader, 5).unwrap();
        assert!(cluster.on_role(2, Role::Leader, 5).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in [0usize, 1, 7, 64, 300, 2000] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            // Forged or not, random schedules must neither panic nor break an invariant.
            protocol(&data).unwrap_or_else(|e| panic!("{len} random bytes: {e}"));
        }
    }
}
