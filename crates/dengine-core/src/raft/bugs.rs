//! Deliberate protocol bugs, compiled in only with the `fault-injection` feature, so the
//! simulator can show that it catches each classic Raft mistake (`docs/correctness.md`).

/// A classic Raft bug that [`Raft::inject_bug`](super::Raft::inject_bug) re-introduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InjectedBug {
    /// Commit an entry of an earlier term by counting replicas (Figure 8, §5.4.2).
    Figure8Commit,
    /// Send a vote grant before the vote is durable (Figure 2).
    VoteBeforePersist,
    /// Acknowledge appended entries before they are durable (Figure 2).
    AckBeforePersist,
    /// The leader counts itself toward a majority for entries it has not persisted
    /// (thesis §10.2.1).
    LeaderCountsUnpersisted,
    /// A follower truncates its log after every append's `prev`, even when the entries after
    /// it match (a stale append then erases acknowledged entries; §5.3).
    TruncateMatchingSuffix,
    /// Serve ReadIndex before the leader has committed an entry of its term (thesis §6.4).
    ReadIndexBeforeFirstCommit,
    /// Allow a membership change before the leader has committed an entry of its term (the
    /// 2015 single-server change bug).
    SingleChangeBeforeCommit,
    /// Count only the incoming majority of a joint configuration for commitment and
    /// CheckQuorum (thesis §4.3 requires both).
    JointQuorumIncomingOnly,
}

impl InjectedBug {
    /// Every injectable bug.
    pub const ALL: [InjectedBug; 8] = [
        InjectedBug::Figure8Commit,
        InjectedBug::VoteBeforePersist,
        InjectedBug::AckBeforePersist,
        InjectedBug::LeaderCountsUnpersisted,
        InjectedBug::TruncateMatchingSuffix,
        InjectedBug::ReadIndexBeforeFirstCommit,
        InjectedBug::SingleChangeBeforeCommit,
        InjectedBug::JointQuorumIncomingOnly,
    ];

    /// The bug's name in kebab case, as the simulator's command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            InjectedBug::Figure8Commit => "figure8-commit",
            InjectedBug::VoteBeforePersist => "vote-before-persist",
            InjectedBug::AckBeforePersist => "ack-before-persist",
            InjectedBug::LeaderCountsUnpersisted => "leader-counts-unpersisted",
            InjectedBug::TruncateMatchingSuffix => "truncate-matching-suffix",
            InjectedBug::ReadIndexBeforeFirstCommit => "read-index-before-first-commit",
            InjectedBug::SingleChangeBeforeCommit => "single-change-before-commit",
            InjectedBug::JointQuorumIncomingOnly => "joint-quorum-incoming-only",
        }
    }

    /// Parses [`InjectedBug::name`].
    pub fn from_name(name: &str) -> Option<InjectedBug> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulator's `--bug NAME` spells each bug by its name: every name parses back to
    /// its bug, and names are distinct.
    #[test]
    fn names_round_trip() {
        for bug in InjectedBug::ALL {
            assert!(!bug.name().is_empty());
            assert_eq!(
                InjectedBug::from_name(bug.name()),
                Some(bug),
                "{}",
                bug.name()
            );
        }
        let names: std::collections::BTreeSet<_> =
            InjectedBug::ALL.iter().map(|b| b.name()).collect();
        assert_eq!(names.len(), InjectedBug::ALL.len());
        assert_eq!(
            InjectedBug::from_name("figure8-commit"),
            Some(InjectedBug::Figure8Commit)
        );
        assert_eq!(InjectedBug::from_name("no-such-bug"), None);
    }
}
