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
