//! The vocabulary of the protocol: identifiers, log entries, hard state and membership.
//!
//! Everything here is plain data. Names follow the Raft paper: a log *entry* has a *term* and an
//! *index*; *HardState* is what a server must persist before answering RPCs (§5.1, Figure 2).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;

/// Identifies a server in the cluster. `0` is reserved and never a valid id.
pub type NodeId = u64;
/// A Raft term (§5.1). Term 0 is the term of the empty log before any election.
pub type Term = u64;
/// A position in the replicated log, starting at 1. Index 0 is the empty prefix.
pub type LogIndex = u64;

/// The largest term any message may carry or any node may reach. A message with a higher term
/// is refused ([`StepError::OutOfRange`](crate::StepError::OutOfRange)): with terms up to
/// `u64::MAX`, one forged message could move a cluster to a term after which no election is
/// possible (the next term would not exist). 2^62 elections are out of reach of any real
/// cluster, so legitimate traffic never meets the bound, and `term + 1` never overflows.
pub const MAX_TERM: Term = 1 << 62;
/// The largest log index any message may carry; see [`MAX_TERM`]. Index arithmetic
/// (`index + 1`, `prev + entries`) on checked input therefore never overflows.
pub const MAX_INDEX: LogIndex = 1 << 62;

/// The (term, index) pair that identifies one log entry uniquely (Log Matching, §5.3).
///
/// Acknowledgements carry an `EntryId` rather than an index alone: an index can be overwritten
/// by a later leader with an entry of another term, and an ack for the old entry must not count
/// for the new one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    /// Term in which the entry was created by a leader.
    pub term: Term,
    /// Position of the entry in the log.
    pub index: LogIndex,
}

impl EntryId {
    /// The id of the empty log prefix: term 0, index 0.
    pub const ZERO: EntryId = EntryId { term: 0, index: 0 };

    /// Creates an id from a term and an index.
    pub const fn new(term: Term, index: LogIndex) -> Self {
        EntryId { term, index }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@t{}", self.index, self.term)
    }
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPayload {
    /// The no-op entry a new leader appends to commit entries of earlier terms (§5.4.2, §8).
    Blank,
    /// A client command, opaque to Raft, handed to the state machine when committed.
    Normal(Bytes),
    /// A cluster membership configuration; it takes effect when appended (§6, thesis §4.1).
    Membership(Membership),
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Term in which a leader created the entry.
    pub term: Term,
    /// Position of the entry in the log.
    pub index: LogIndex,
    /// What the entry carries.
    pub payload: EntryPayload,
}

/// Fixed per-entry accounting overhead, so that limits on bytes also bound the count of tiny
/// entries (term, index and a tag).
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

impl Entry {
    /// Creates an entry.
    pub fn new(term: Term, index: LogIndex, payload: EntryPayload) -> Self {
        Entry {
            term,
            index,
            payload,
        }
    }

    /// The entry's (term, index) identity.
    pub fn id(&self) -> EntryId {
        EntryId::new(self.term, self.index)
    }

    /// Approximate size in bytes, used by every byte limit (message size, in-flight bytes,
    /// uncommitted bytes, apply batches).
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.payload_bytes()
    }

    /// Size of the payload alone (0 for blank entries).
    pub fn payload_bytes(&self) -> u64 {
        match &self.payload {
            EntryPayload::Blank => 0,
            EntryPayload::Normal(data) => data.len() as u64,
            EntryPayload::Membership(m) => {
                let ids = m.voters.len() + m.voters_outgoing.len() + m.learners.len();
                let addresses: usize = m.addresses.values().map(|a| 12 + a.len()).sum();
                (8 * ids + addresses) as u64
            }
        }
    }
}

/// The state a server persists before it answers any RPC (Raft paper Figure 2).
///
/// `commit` is persisted too so that a restarted node can apply what it knew to be committed
/// without waiting for a leader; losing it is harmless (it is only a lower bound).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// Latest term this server has seen.
    pub term: Term,
    /// Candidate that received this server's vote in `term`, if any.
    pub vote: Option<NodeId>,
    /// Highest index known to be committed.
    pub commit: LogIndex,
}

/// Who takes part in the cluster: voters decide elections and commitment, learners only
/// receive the log. While a joint change is in progress (Raft paper §6, thesis §4.3) the
/// configuration is *joint*: decisions need a majority of `voters` (the incoming
/// configuration) and a majority of `voters_outgoing` (the old one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    /// Servers whose votes and acknowledgements count toward a majority (the incoming
    /// configuration while joint).
    pub voters: BTreeSet<NodeId>,
    /// The outgoing voters of a joint configuration; empty when not joint.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Non-voting servers that replicate the log.
    pub learners: BTreeSet<NodeId>,
    /// Where members are reached (e.g. `"10.0.0.7:7000"`), replicated with the configuration
    /// so that every node (and every future leader) knows how to reach a node that joined.
    /// Opaque to the protocol; a member may have no address (in-process clusters).
    pub addresses: BTreeMap<NodeId, String>,
    /// The highest node id this cluster has ever had as a member. A node id is never given
    /// out twice: a node that joins must have a higher id, so a removed node (or an old copy
    /// of one) can never be mistaken for a member, and a member with a new id is a new member
    /// (with empty storage) by definition. Always at least the largest id in the sets above.
    pub highest_id: NodeId,
}

impl Membership {
    /// A configuration of the given voters and no learners.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        let voters: BTreeSet<NodeId> = voters.into_iter().collect();
        Membership {
            highest_id: voters.last().copied().unwrap_or(0),
            voters,
            voters_outgoing: BTreeSet::new(),
            learners: BTreeSet::new(),
            addresses: BTreeMap::new(),
        }
    }

    /// The same configuration with `address` recorded for `id`.
    pub fn with_address(mut self, id: NodeId, address: impl Into<String>) -> Self {
        self.addresses.insert(id, address.into());
        self
    }

    /// The address recorded for `id`, if any.
    pub fn address(&self, id: NodeId) -> Option<&str> {
        self.addresses.get(&id).map(String::as_str)
    }

    /// The same configuration with the given learners added.
    pub fn with_learners(mut self, learners: impl IntoIterator<Item = NodeId>) -> Self {
        self.learners.extend(learners);
        self.highest_id = self.highest_id.max(self.largest_member_id());
        self
    }

    /// The largest id among the current members (0 when there are none); compare
    /// [`highest_id`](Self::highest_id), which also remembers members that left.
    pub fn largest_member_id(&self) -> NodeId {
        self.members().max().unwrap_or(0)
    }

    /// Whether `id` was a member of this cluster once and is no more: it is at or below
    /// [`highest_id`](Self::highest_id) but not a member. Ids are never reused, so such a node
    /// can never come back; its messages are refused. (Ids skipped at bootstrap, e.g. 2 in
    /// `{1, 3}`, count as retired too: a joining node always gets an id above `highest_id`.)
    pub fn is_retired(&self, id: NodeId) -> bool {
        id != 0 && id <= self.highest_id && !self.contains(id)
    }

    /// Whether a joint change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes (in the incoming or, while joint, the outgoing configuration).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member (voters of both configurations, then learners), each once, ascending
    /// within each group.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters
            .iter()
            .chain(
                self.voters_outgoing
                    .iter()
                    .filter(|v| !self.voters.contains(v)),
            )
            .chain(self.learners.iter())
            .copied()
    }

    /// Every voter of either configuration, ascending.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        self.voters.union(&self.voters_outgoing).copied().collect()
    }
}

/// What a state-machine snapshot covers: every entry up to `last_included`, and the
/// configuration in effect at that point (thesis §5.1). Stored with the snapshot; sent ahead
/// of the snapshot's data when a follower must be caught up by snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    /// The last entry included in the snapshot.
    pub last_included: EntryId,
    /// The membership as of `last_included`.
    pub membership: Membership,
}

/// The role a node plays in its current term (§5.1, thesis §9.6 for pre-candidates).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for pre-votes before starting a real election, without raising its term.
    PreCandidate,
    /// Campaigns for votes in a new term.
    Candidate,
    /// Accepts proposals and replicates the log.
    Leader,
}

impl Role {
    /// Every role, in the order of an election.
    pub const ALL: [Role; 4] = [
        Role::Follower,
        Role::PreCandidate,
        Role::Candidate,
        Role::Leader,
    ];

    /// The role's name: `follower`, `pre-candidate`, `candidate` or `leader`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The leader a "not the leader" refusal points to, as a sentence for error messages: "the
/// leader is node 3 at 10.0.0.3:7000", or that no leader is known yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderHint<'a> {
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Where it is reached, if the configuration records it.
    pub address: Option<&'a str>,
}

impl<'a> LeaderHint<'a> {
    /// The hint for an error's `leader` and `leader_address` fields.
    pub fn of(leader: &Option<NodeId>, address: &'a Option<String>) -> Self {
        LeaderHint {
            leader: *leader,
            address: address.as_deref(),
        }
    }
}

impl fmt::Display for LeaderHint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.leader, self.address) {
            (Some(id), Some(address)) => write!(f, "the leader is node {id} at {address}"),
            (Some(id), None) => {
                write!(f, "the leader is node {id} (its address is not known here)")
            }
            (None, _) => f.write_str("no leader is known yet (an election may be under way)"),
        }
    }
}

/// Volatile leadership information, reported in a [`Ready`](crate::Ready) when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SoftState {
    /// This node's role.
    pub role: Role,
    /// The current term.
    pub term: Term,
    /// The leader this node knows of in `term`, if any.
    pub leader: Option<NodeId>,
}

#[cfg(test)]
mod leader_hint_tests {
    use super::LeaderHint;

    #[test]
    fn leader_hints_are_sentences() {
        let hint = |leader, address| LeaderHint { leader, address }.to_string();
        assert_eq!(
            hint(Some(3), Some("10.0.0.3:7000")),
            "the leader is node 3 at 10.0.0.3:7000"
        );
        assert_eq!(
            hint(Some(3), None),
            "the leader is node 3 (its address is not known here)"
        );
        assert_eq!(
            hint(None, None),
            "no leader is known yet (an election may be under way)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_display_as_index_at_term() {
        assert_eq!(EntryId::new(2, 15).to_string(), "15@t2");
    }

    /// Every byte limit counts entries by `size_bytes`; a configuration entry counts 8 bytes
    /// per id it names and 12 per address plus the address itself.
    #[test]
    fn payload_sizes() {
        let blank = Entry::new(1, 1, EntryPayload::Blank);
        assert_eq!(
            (blank.payload_bytes(), blank.size_bytes()),
            (0, ENTRY_OVERHEAD_BYTES)
        );
        let normal = Entry::new(1, 2, EntryPayload::Normal(Bytes::from_static(b"hello")));
        assert_eq!(normal.payload_bytes(), 5);
        let mut m = Membership::new([1, 2, 3]).with_learners([6]);
        m.voters_outgoing = [4, 5].into();
        m.addresses.insert(1, "10.0.0.1:7000".into());
        let config = Entry::new(1, 3, EntryPayload::Membership(m));
        assert_eq!(config.payload_bytes(), 8 * 6 + (12 + 13));
    }

    #[test]
    fn learners_are_members_that_do_not_vote() {
        let m = Membership::new([1, 2]).with_learners([5]);
        assert!(m.is_learner(5) && !m.is_voter(5) && m.contains(5));
        assert!(!m.is_learner(1) && !m.is_learner(3));
        assert_eq!(m.highest_id, 5, "ids up to the learner's are taken");
    }

    #[test]
    fn role_names() {
        let names: Vec<String> = Role::ALL.iter().map(Role::to_string).collect();
        assert_eq!(names, ["follower", "pre-candidate", "candidate", "leader"]);
        assert_eq!(Role::Leader.as_str(), "leader");
    }
}
