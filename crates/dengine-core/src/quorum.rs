//! Majority arithmetic: who has won an election and which index a quorum holds.
//!
//! Kept apart from the protocol so it can be table-tested on its own (§5.2 elections, §5.3
//! commitment: "replicated on a majority of servers").

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{LogIndex, NodeId};

/// Outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    /// A majority granted.
    Won,
    /// A majority can no longer grant.
    Lost,
    /// Not decided yet.
    Pending,
}

/// Smallest number of voters that forms a majority.
pub(crate) fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// Counts `votes` (voter → granted) among `voters`; votes from non-voters are ignored.
pub(crate) fn vote_result(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    if voters.is_empty() {
        // No configuration: nobody can win. Joining nodes sit here until they learn one.
        return VoteResult::Lost;
    }
    let (mut granted, mut rejected) = (0, 0);
    for v in voters {
        match votes.get(v) {
            Some(true) => granted += 1,
            Some(false) => rejected += 1,
            None => {}
        }
    }
    let need = majority(voters.len());
    if granted >= need {
        VoteResult::Won
    } else if voters.len() - rejected < need {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

/// The largest value that at least a majority of `voters` have reached, given each voter's
/// value (e.g. match index → committable index, acknowledged heartbeat round → confirmed
/// round). Returns 0 for an empty configuration.
pub(crate) fn quorum_value(voters: &BTreeSet<NodeId>, value: impl Fn(NodeId) -> u64) -> LogIndex {
    if voters.is_empty() {
        return 0;
    }
    let mut values: Vec<u64> = voters.iter().map(|&v| value(v)).collect();
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[majority(values.len()) - 1]
}

/// Election outcome under joint consensus (§6, thesis §4.3): a candidate needs a majority of
/// the incoming *and*, while joint, of the outgoing voters.
pub(crate) fn joint_vote_result(
    incoming: &BTreeSet<NodeId>,
    outgoing: &BTreeSet<NodeId>,
    votes: &BTreeMap<NodeId, bool>,
) -> VoteResult {
    let a = vote_result(incoming, votes);
    if outgoing.is_empty() {
        return a;
    }
    match (a, vote_result(outgoing, votes)) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

/// The largest value a majority of the incoming *and*, while joint, of the outgoing voters
/// have reached (commitment under joint consensus, thesis §4.3).
pub(crate) fn joint_quorum_value(
    incoming: &BTreeSet<NodeId>,
    outgoing: &BTreeSet<NodeId>,
    value: impl Fn(NodeId) -> u64,
) -> u64 {
    let a = quorum_value(incoming, &value);
    if outgoing.is_empty() {
        a
    } else {
        a.min(quorum_value(outgoing, &value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn majority_sizes() {
        for (n, m) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)] {
            assert_eq!(majority(n), m, "majority of {n}");
        }
    }

    #[test]
    fn vote_results_table() {
        let voters = set(&[1, 2, 3]);
        let table: &[(&[(NodeId, bool)], VoteResult)] = &[
            (&[], VoteResult::Pending),
            (&[(1, true)], VoteResult::Pending),
            (&[(1, true), (2, true)], VoteResult::Won),
            (&[(1, true), (2, false)], VoteResult::Pending),
            (&[(1, true), (2, false), (3, false)], VoteResult::Lost),
            (&[(1, true), (9, true)], VoteResult::Pending),
        ];
        for (votes, want) in table {
            let votes: BTreeMap<_, _> = votes.iter().copied().collect();
            assert_eq!(vote_result(&voters, &votes), *want, "{votes:?}");
        }
        assert_eq!(vote_result(&set(&[]), &BTreeMap::new()), VoteResult::Lost);
        let four = set(&[1, 2, 3, 4]);
        let two_two: BTreeMap<_, _> = [(1, true), (2, true), (3, false), (4, false)].into();
        assert_eq!(
            vote_result(&four, &two_two),
            VoteResult::Lost,
            "2 of 4 is no majority"
        );
    }

    #[test]
    fn quorum_value_table() {
        let table: &[(&[u64], u64)] = &[
            (&[5], 5),
            (&[5, 3], 3),
            (&[5, 3, 1], 3),
            (&[1, 5, 3, 2], 2),
            (&[9, 9, 1, 1, 1], 1),
            (&[9, 9, 9, 1, 1], 9),
        ];
        for (values, want) in table {
            let voters: BTreeSet<NodeId> = (1..=values.len() as u64).collect();
            let got = quorum_value(&voters, |id| values[(id - 1) as usize]);
            assert_eq!(got, *want, "{values:?}");
        }
        assert_eq!(quorum_value(&set(&[]), |_| 7), 0);
    }

    #[test]
    fn joint_votes_need_both_majorities() {
        let old = set(&[1, 2, 3]);
        let new = set(&[3, 4, 5]);
        let table: &[(&[(NodeId, bool)], VoteResult)] = &[
            // A majority of the old configuration alone is not enough...
            (&[(1, true), (2, true)], VoteResult::Pending),
            // ...nor of the new one alone.
            (&[(4, true), (5, true)], VoteResult::Pending),
            (&[(1, true), (3, true), (4, true)], VoteResult::Won),
            (
                &[(1, true), (2, true), (4, true), (5, true)],
                VoteResult::Won,
            ),
            // Losing either side loses.
            (
                &[(4, false), (5, false), (1, true), (2, true)],
                VoteResult::Lost,
            ),
            (
                &[(1, false), (2, false), (4, true), (5, true)],
                VoteResult::Lost,
            ),
        ];
        for (votes, want) in table {
            let votes: BTreeMap<_, _> = votes.iter().copied().collect();
            assert_eq!(joint_vote_result(&new, &old, &votes), *want, "{votes:?}");
        }
        let votes: BTreeMap<_, _> = [(1, true), (2, true)].into();
        assert_eq!(
            joint_vote_result(&old, &set(&[]), &votes),
            VoteResult::Won,
            "not joint: incoming only"
        );
    }

    #[test]
    fn joint_commit_is_the_lower_of_both_majorities() {
        let old = set(&[1, 2, 3]);
        let new = set(&[3, 4, 5]);
        // match: 1->9, 2->9, 3->5, 4->2, 5->1
        let m = |id: NodeId| [0, 9, 9, 5, 2, 1][id as usize];
        assert_eq!(quorum_value(&old, m), 9);
        assert_eq!(quorum_value(&new, m), 2);
        assert_eq!(joint_quorum_value(&new, &old, m), 2);
        assert_eq!(joint_quorum_value(&old, &set(&[]), m), 9, "not joint");
    }
}
