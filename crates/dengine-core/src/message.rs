//! Messages exchanged between Raft nodes.
//!
//! Every message carries the sender's current term (§5.1: "if one server's current term is
//! smaller than the other's, it updates its current term"). Pre-vote requests and granted
//! pre-vote responses are the exception: they carry the term the candidate *would* campaign in,
//! and receiving them does not change anyone's term (thesis §9.6).

use crate::types::{Entry, EntryId, LogIndex, MAX_INDEX, MAX_TERM, NodeId, SnapshotMeta, Term};

/// Identifies a read request chosen by the runtime; echoed back in the read's outcome.
pub type ReadCtx = u64;

/// A message from one node to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// Sender's term (or the proposed term, for pre-votes).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// RequestVote (§5.2), or a pre-vote probe when `pre_vote` is set (thesis §9.6).
    VoteRequest(VoteRequest),
    /// Answer to a [`MessageBody::VoteRequest`].
    VoteResponse(VoteResponse),
    /// AppendEntries carrying entries (§5.3).
    Append(AppendRequest),
    /// Answer to an [`MessageBody::Append`].
    AppendResponse(AppendResponse),
    /// Leader heartbeat (an AppendEntries without entries that only asserts leadership).
    Heartbeat(Heartbeat),
    /// Answer to a [`MessageBody::Heartbeat`].
    HeartbeatResponse(HeartbeatResponse),
    /// A follower forwards a client read to the leader (thesis §6.4).
    ReadIndexRequest(ReadIndexRequest),
    /// The leader's answer to a forwarded read.
    ReadIndexResponse(ReadIndexResponse),
    /// The leader asks the recipient to start an election now (leader transfer, thesis
    /// §3.10).
    TimeoutNow,
    /// InstallSnapshot (§7): the follower needs entries the leader has compacted. The core
    /// sends only the metadata; the runtime's transport streams the state machine's snapshot
    /// data with it and hands both to the receiving runtime.
    InstallSnapshot(SnapshotMeta),
}

/// RequestVote arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoteRequest {
    /// A pre-vote asks "would you vote for me?" without changing any state (thesis §9.6).
    pub pre_vote: bool,
    /// The candidate's last log entry, for the up-to-date check (§5.4.1).
    pub last_log: EntryId,
    /// Set when the election was asked for by the current leader (leader transfer, thesis
    /// §3.10); such a request is granted even by followers that recently heard from a leader.
    pub leader_transfer: bool,
}

/// RequestVote results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoteResponse {
    /// Whether this answers a pre-vote.
    pub pre_vote: bool,
    /// Whether the vote was granted.
    pub granted: bool,
}

/// AppendEntries arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    /// The entry immediately preceding `entries` (prevLogIndex, prevLogTerm in §5.3).
    pub prev: EntryId,
    /// Entries to store, consecutive from `prev.index + 1`; may be empty.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub commit: LogIndex,
}

/// AppendEntries results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendResponse {
    /// The follower's log now matches the leader's up to and including `last` (and that is
    /// durable on the follower).
    Accepted {
        /// Last entry known to match the leader's log.
        last: EntryId,
    },
    /// The follower's log did not contain `prev`.
    Rejected {
        /// The `prev.index` of the rejected request, so the leader can tell stale rejections
        /// from current ones.
        rejected_index: LogIndex,
        /// Where the follower's log diverges, to skip a whole term per round trip.
        hint: ConflictHint,
    },
}

/// Fast log backtracking hint sent with a rejection (§5.3, "the follower can include the term
/// of the conflicting entry and the first index it stores for that term").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictHint {
    /// The follower's log is shorter than `prev.index`; it ends at `last_index`.
    LogTooShort {
        /// The follower's last log index.
        last_index: LogIndex,
    },
    /// The follower holds an entry of `term` at `prev.index`; its entries of that term start at
    /// `first_index`.
    TermConflict {
        /// Term of the follower's entry at `prev.index`.
        term: Term,
        /// First index at which the follower stores an entry of `term`.
        first_index: LogIndex,
    },
}

/// Heartbeat arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The leader's commit index, capped at what the leader knows the follower holds, so a
    /// follower never commits entries it has not been shown to match.
    pub commit: LogIndex,
    /// Heartbeat round number; echoed back, it confirms leadership for ReadIndex and leases.
    pub round: u64,
}

/// Heartbeat results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatResponse {
    /// The round being answered.
    pub round: u64,
    /// Set when the follower's log ends (at this index) before the heartbeat's commit index.
    /// The leader sends a follower a commit index only up to what that follower acknowledged
    /// in this term, so this means the follower lost entries it had acknowledged: its storage
    /// was wiped, damaged or rolled back. The leader then stops counting those entries for it
    /// (see [`PeerRegression`](crate::PeerRegression)).
    pub log_end: Option<LogIndex>,
}

/// A read forwarded from a follower to the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadIndexRequest {
    /// The follower's request id, echoed back.
    pub ctx: ReadCtx,
    /// Whether the leader may answer from its lease instead of a heartbeat round.
    pub lease: bool,
}

/// The leader's answer to a forwarded read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadIndexResponse {
    /// The follower's request id.
    pub ctx: ReadCtx,
    /// The index the follower must have applied before serving the read, or `None` if the
    /// leader could not serve it (not leader, or not yet committed an entry of its term).
    pub index: Option<LogIndex>,
}

impl MessageBody {
    /// A short name for traces and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::VoteRequest(r) if r.pre_vote => "PreVote",
            MessageBody::VoteRequest(_) => "Vote",
            MessageBody::VoteResponse(r) if r.pre_vote => "PreVoteResponse",
            MessageBody::VoteResponse(_) => "VoteResponse",
            MessageBody::Append(_) => "Append",
            MessageBody::AppendResponse(_) => "AppendResponse",
            MessageBody::Heartbeat(_) => "Heartbeat",
            MessageBody::HeartbeatResponse(_) => "HeartbeatResponse",
            MessageBody::ReadIndexRequest(_) => "ReadIndex",
            MessageBody::ReadIndexResponse(_) => "ReadIndexResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::InstallSnapshot(_) => "InstallSnapshot",
        }
    }

    /// Whether this message is a response, which must not leave the node before the state it
    /// reports is durable (Raft paper Figure 2: "respond to RPCs only after updating stable
    /// storage").
    pub fn is_response(&self) -> bool {
        matches!(
            self,
            MessageBody::VoteResponse(_)
                | MessageBody::AppendResponse(_)
                | MessageBody::HeartbeatResponse(_)
                | MessageBody::ReadIndexResponse(_)
        )
    }
}

impl Message {
    /// The first number in this message that no legitimate peer sends, as (field, value);
    /// `None` when the message is well-formed. `receiver_term` is the receiving node's term.
    /// [`Raft::step`](crate::Raft::step) refuses such messages before they touch any state:
    ///
    /// * a term above [`MAX_TERM`] unless it is at most one above `receiver_term` (one
    ///   election): one forged message can move a cluster to 2^62 at most, from where
    ///   elections still go on one term at a time, so the next term is always representable;
    /// * a term inside the message (of an entry, a last log entry, a conflict, a snapshot)
    ///   above the message's own term: a node never holds entries of a term it has not seen;
    /// * an index above [`MAX_INDEX`], so `index + 1` and `prev + entries` cannot overflow.
    pub fn out_of_range(&self, receiver_term: Term) -> Option<(&'static str, u64)> {
        if self.term > MAX_TERM && self.term > receiver_term.saturating_add(1) {
            return Some(("term", self.term));
        }
        let own = self.term;
        let term = |t: Term, what: &'static str| (t > own).then_some((what, t));
        let index = |i: LogIndex, what: &'static str| (i > MAX_INDEX).then_some((what, i));
        let id =
            |e: EntryId, t: &'static str, i: &'static str| term(e.term, t).or(index(e.index, i));
        match &self.body {
            MessageBody::VoteRequest(r) => id(r.last_log, "last_log.term", "last_log.index"),
            MessageBody::Append(r) => id(r.prev, "prev.term", "prev.index")
                .or_else(|| index(r.commit, "commit"))
                .or_else(|| {
                    let count = r.entries.len() as u64;
                    index(r.prev.index.saturating_add(count), "prev.index + entries")
                })
                .or_else(|| {
                    r.entries
                        .iter()
                        .find_map(|e| id(e.id(), "entry.term", "entry.index"))
                }),
            MessageBody::AppendResponse(AppendResponse::Accepted { last }) => {
                id(*last, "last.term", "last.index")
            }
            MessageBody::AppendResponse(AppendResponse::Rejected {
                rejected_index,
                hint,
            }) => index(*rejected_index, "rejected_index").or_else(|| match *hint {
                ConflictHint::LogTooShort { last_index } => index(last_index, "hint.last_index"),
                ConflictHint::TermConflict {
                    term: t,
                    first_index,
                } => term(t, "hint.term").or_else(|| index(first_index, "hint.first_index")),
            }),
            MessageBody::Heartbeat(hb) => index(hb.commit, "commit"),
            MessageBody::HeartbeatResponse(r) => r.log_end.and_then(|i| index(i, "log_end")),
            MessageBody::ReadIndexResponse(r) => r.index.and_then(|i| index(i, "index")),
            MessageBody::InstallSnapshot(meta) => id(
                meta.last_included,
                "last_included.term",
                "last_included.index",
            ),
            MessageBody::VoteResponse(_)
            | MessageBody::ReadIndexRequest(_)
            | MessageBody::TimeoutNow => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_pre_votes_apart_from_votes() {
        let last_log = EntryId::ZERO;
        let request = |pre_vote| {
            MessageBody::VoteRequest(VoteRequest {
                pre_vote,
                last_log,
                leader_transfer: false,
            })
        };
        let response = |pre_vote| {
            MessageBody::VoteResponse(VoteResponse {
                pre_vote,
                granted: true,
            })
        };
        assert_eq!(request(true).kind(), "PreVote");
        assert_eq!(request(false).kind(), "Vote");
        assert_eq!(response(true).kind(), "PreVoteResponse");
        assert_eq!(response(false).kind(), "VoteResponse");
        assert_eq!(MessageBody::TimeoutNow.kind(), "TimeoutNow");
    }

    /// A term of exactly `MAX_TERM` is still accepted from anyone: the bound is the largest
    /// term a cluster may reach, not the first refused one.
    #[test]
    fn max_term_itself_is_in_range() {
        let msg = |term| Message {
            from: 2,
            to: 1,
            term,
            body: MessageBody::TimeoutNow,
        };
        assert_eq!(msg(MAX_TERM).out_of_range(0), None);
        assert_eq!(
            msg(MAX_TERM + 1).out_of_range(0),
            Some(("term", MAX_TERM + 1))
        );
        assert_eq!(
            msg(MAX_TERM + 1).out_of_range(MAX_TERM),
            None,
            "one election above ours"
        );
    }

    /// Likewise `MAX_INDEX` is the largest index a message may name.
    #[test]
    fn max_index_itself_is_in_range() {
        let append = |index| Message {
            from: 2,
            to: 1,
            term: 1,
            body: MessageBody::Append(AppendRequest {
                prev: EntryId::new(1, index),
                entries: vec![],
                commit: 0,
            }),
        };
        assert_eq!(append(MAX_INDEX).out_of_range(1), None);
        assert_eq!(
            append(MAX_INDEX + 1).out_of_range(1),
            Some(("prev.index", MAX_INDEX + 1))
        );
    }
}
