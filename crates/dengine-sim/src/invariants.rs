//! Safety invariants checked while a simulation runs (Raft paper Figure 3), plus the
//! monotonicity of commit and applied indexes on a live node.

use std::collections::{BTreeMap, HashMap};

use dengine_core::{EntryId, LogIndex, LogReader, MemoryStore, NodeId, Term};

/// What the checker has learned so far in a run.
#[derive(Debug, Default)]
pub struct Invariants {
    /// Election Safety: the one leader seen in each term.
    leaders: HashMap<Term, NodeId>,
    /// State Machine Safety: the entry applied at each index (by anyone), with a payload hash
    /// and an upper bound on the term in which it was committed (the highest term any node
    /// had reached when it was first applied).
    committed: BTreeMap<LogIndex, (EntryId, u64, Term)>,
    /// Last commit and applied index seen per (node, incarnation).
    watermarks: HashMap<(NodeId, u64), (LogIndex, LogIndex)>,
}

/// A cheap, stable hash of an entry payload (FNV-1a).
pub fn payload_hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// What State Machine Safety compares of an applied entry: its payload's hash, or a constant
/// for the entries without one.
pub fn entry_hash(payload: &dengine_core::EntryPayload) -> u64 {
    match payload {
        dengine_core::EntryPayload::Normal(d) => payload_hash(d),
        dengine_core::EntryPayload::Blank => 1,
        dengine_core::EntryPayload::Membership(_) => 2,
    }
}

impl Invariants {
    /// Election Safety: at most one leader per term, over the whole run (crashes included).
    pub fn leader(&mut self, term: Term, node: NodeId) -> Result<(), String> {
        match self.leaders.insert(term, node) {
            Some(other) if other != node => Err(format!(
                "election safety: nodes {other} and {node} both led term {term}"
            )),
            _ => Ok(()),
        }
    }

    /// State Machine Safety: no two nodes apply different entries at one index.
    pub fn applied(
        &mut self,
        node: NodeId,
        id: EntryId,
        hash: u64,
        max_term: Term,
    ) -> Result<(), String> {
        match self.committed.get(&id.index) {
            Some(&(other, other_hash, _)) if other != id || other_hash != hash => Err(format!(
                "state machine safety: node {node} applied {id} at index {} but {other} was \
                 applied there before",
                id.index
            )),
            Some(_) => Ok(()),
            None => {
                self.committed.insert(id.index, (id, hash, max_term));
                Ok(())
            }
        }
    }

    /// Commit and applied indexes never decrease on a live node (an incarnation).
    pub fn watermarks(
        &mut self,
        node: NodeId,
        incarnation: u64,
        commit: LogIndex,
        applied: LogIndex,
    ) -> Result<(), String> {
        let entry = self
            .watermarks
            .entry((node, incarnation))
            .or_insert((commit, applied));
        if commit < entry.0 {
            return Err(format!(
                "node {node} commit index went back from {} to {commit}",
                entry.0
            ));
        }
        if applied < entry.1 {
            return Err(format!(
                "node {node} applied index went back from {} to {applied}",
                entry.1
            ));
        }
        *entry = (commit, applied);
        Ok(())
    }

    /// Leader Completeness (§5.4): an entry committed in some term is in the log of every
    /// leader of a later term. The commit term is bounded from above by the highest term known
    /// when the entry was first applied, so only leaders of terms past that bound are checked
    /// (never a false alarm; a stale leader of an older term may legitimately lack it).
    /// `term_at` reads the leader's log (durable or not).
    pub fn leader_complete(
        &self,
        node: NodeId,
        term: Term,
        term_at: impl Fn(LogIndex) -> Option<Option<Term>>,
    ) -> Result<(), String> {
        for (&index, &(id, _, committed_by)) in &self.committed {
            // `None`: compacted into the leader's snapshot, which covers it.
            let Some(have) = term_at(index) else {
                continue;
            };
            if committed_by < term && have != Some(id.term) {
                return Err(format!(
                    "leader completeness: node {node}, leader of term {term}, lacks entry {id} \
                     committed by term {committed_by} (has term {have:?} at index {index})"
                ));
            }
        }
        Ok(())
    }

    /// Entries known committed.
    pub fn committed_count(&self) -> usize {
        self.committed.len()
    }
}

/// Log Matching (§5.3): if two durable logs hold an entry with the same index and term, they
/// hold the same terms at every index before it. (Equal payloads at an equal (term, index)
/// follow from Election Safety, checked separately: one leader creates all entries of a term.)
pub fn log_matching(a: (NodeId, &MemoryStore), b: (NodeId, &MemoryStore)) -> Result<(), String> {
    let (la, lb) = (a.1, b.1);
    let low = la.first_index().max(lb.first_index());
    let high = la.last_index().min(lb.last_index());
    // Find the highest index where both hold the same term; below it everything must match.
    let mut i = high;
    while i >= low && i > 0 {
        if la.term(i).ok() == lb.term(i).ok() {
            break;
        }
        i -= 1;
    }
    if i < low || i == 0 {
        return Ok(());
    }
    for j in (low..i).rev() {
        let (ta, tb) = (la.term(j).ok(), lb.term(j).ok());
        if ta != tb {
            return Err(format!(
                "log matching: nodes {} and {} agree at index {i} but differ at index {j}: term \
                 {ta:?} vs {tb:?}",
                a.0, b.0
            ));
        }
    }
    Ok(())
}

// ----- checks over a cluster of simulated nodes (the seeded simulator and the protocol fuzzer) --

/// The highest term any live node has reached.
pub(crate) fn max_term(nodes: &[crate::node::SimNode]) -> Term {
    nodes
        .iter()
        .filter_map(|n| n.raft.as_ref())
        .map(|r| r.term())
        .max()
        .unwrap_or(0)
}

/// A node has just become leader of `term`: Election Safety, and Leader Completeness for the
/// entries not compacted into its snapshot (those are covered by it, and state machine safety
/// is checked on every snapshot).
pub(crate) fn new_leader(
    inv: &mut Invariants,
    node: &crate::node::SimNode,
    term: Term,
) -> Result<(), String> {
    inv.leader(term, node.id)?;
    if let Some(raft) = node.raft.as_ref() {
        let first = raft.log_reader().first_index();
        inv.leader_complete(node.id, term, |i| {
            if i < first {
                None
            } else {
                Some(raft.log_term(i).ok())
            }
        })?;
    }
    Ok(())
}

/// After every step: one leader per term, and commit and applied indexes never going back on a
/// live node.
pub(crate) fn live_nodes(
    inv: &mut Invariants,
    nodes: &[crate::node::SimNode],
) -> Result<(), String> {
    for node in nodes {
        let Some(raft) = node.raft.as_ref() else {
            continue;
        };
        if raft.role() == dengine_core::Role::Leader {
            inv.leader(raft.term(), raft.id())?;
        }
        inv.watermarks(
            node.id,
            node.incarnation,
            raft.commit_index(),
            raft.applied_index(),
        )?;
    }
    Ok(())
}

/// Log Matching between every pair of durable logs.
pub(crate) fn all_logs_match(nodes: &[crate::node::SimNode]) -> Result<(), String> {
    for a in 0..nodes.len() {
        for b in a + 1..nodes.len() {
            let (na, nb) = (&nodes[a], &nodes[b]);
            log_matching((na.id, na.durable_log()), (nb.id, nb.durable_log()))?;
        }
    }
    Ok(())
}

/// Keeps a node's new snapshot (for followers that will need it) and checks that every
/// snapshot at the same entry holds the same state (state machine safety). Returns whether it
/// was the first snapshot at `last`.
pub(crate) fn snapshot_taken(
    snapshots: &mut HashMap<EntryId, crate::kv::KvStore>,
    node: NodeId,
    last: EntryId,
    kv: crate::kv::KvStore,
) -> Result<bool, String> {
    match snapshots.get(&last) {
        Some(other) if *other != kv => Err(format!(
            "state machine safety: node {node}'s snapshot at {last} differs from another \
             node's snapshot there"
        )),
        Some(_) => Ok(false),
        None => {
            snapshots.insert(last, kv);
            Ok(true)
        }
    }
}
