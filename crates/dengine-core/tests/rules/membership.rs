//! Membership changes: joint consensus (Raft paper §6, thesis §4.3), single-server changes
//! and their 2015 safety rule (thesis §4.1–§4.2), learners (thesis §4.2.1) and removing the
//! leader (thesis §4.2.2).

use std::collections::BTreeSet;

use dengine_core::{EntryPayload, MembershipChange, MembershipError, Role};

use crate::cluster::Cluster;

use MembershipChange::{AddLearner, AddVoter, Remove};

fn set(ids: &[u64]) -> BTreeSet<u64> {
    ids.iter().copied().collect()
}

/// Thesis §4.3: a change of several voters goes through C_old,new, and the leader leaves the
/// joint configuration on its own once C_old,new commits.
#[test]
fn joint_change_grows_three_to_five_and_leaves_the_joint_configuration() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_empty_node(4);
    c.add_empty_node(5);
    let joint = c
        .node_mut(1)
        .change_membership(&[AddVoter(4), AddVoter(5)])
        .unwrap();
    let m = c.node(1).membership().clone();
    assert!(m.is_joint(), "C_old,new takes effect on append");
    assert_eq!(m.voters, set(&[1, 2, 3, 4, 5]));
    assert_eq!(m.voters_outgoing, set(&[1, 2, 3]));
    c.stabilize();
    assert!(
        c.node(1).commit_index() > joint.index,
        "C_new appended and committed"
    );
    for id in 1..=5 {
        let m = c.node(id).membership();
        assert!(!m.is_joint(), "node {id} left the joint configuration");
        assert_eq!(m.voters, set(&[1, 2, 3, 4, 5]), "node {id}");
    }
    c.propose(1, "after");
    c.stabilize();
    assert_eq!(c.applied_data(5), ["after"]);
}

/// Thesis §4.3: in C_old,new, commitment needs a majority of both configurations. Replacing
/// {2, 3} with {4, 5} while 4 and 5 are unreachable: the old majority holds the joint entry,
/// but it must not commit.
#[test]
fn joint_configuration_commits_only_with_majorities_of_both() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_empty_node(4);
    c.add_empty_node(5);
    c.isolate(4);
    c.isolate(5);
    let joint = c
        .node_mut(1)
        .change_membership(&[Remove(2), Remove(3), AddVoter(4), AddVoter(5)])
        .unwrap();
    c.stabilize();
    assert_eq!(
        c.node(2).last_log_id().index,
        joint.index,
        "the old majority has it"
    );
    assert!(
        c.node(1).commit_index() < joint.index,
        "but the new majority {{1, 4, 5}} does not"
    );
    c.heal();
    c.tick_all(5);
    let m = c.node(1).membership();
    assert_eq!(m.voters, set(&[1, 4, 5]));
    assert!(!m.is_joint());
    assert!(c.node(1).commit_index() > joint.index);
}

/// Thesis §4.1: a server uses the newest configuration in its log, committed or not.
#[test]
fn configuration_takes_effect_when_appended_not_when_committed() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_empty_node(4);
    c.block(2, 1); // 2's acks are lost: nothing new commits with 3 isolated
    c.isolate(3);
    let id = c.node_mut(1).change_membership_single(AddVoter(4)).unwrap();
    c.stabilize();
    assert!(c.node(1).commit_index() < id.index);
    assert!(
        c.node(2).membership().voters.contains(&4),
        "in effect on the follower"
    );
    assert!(c.node(2).commit_index() < id.index, "though not committed");
}

/// A configuration entry that is truncated away is undone: the node falls back to the
/// newest configuration left in its log.
#[test]
fn truncated_configuration_entry_is_rolled_back() {
    let mut c = Cluster::new(5);
    c.elect(1);
    c.add_empty_node(6);
    c.isolate(1);
    c.unblock_pair(1, 2); // only 1 and 2 talk: the entry reaches 2 and stays uncommitted
    c.node_mut(1).change_membership_single(AddVoter(6)).unwrap();
    c.stabilize();
    assert!(c.node(2).membership().voters.contains(&6));
    // One of 3, 4, 5 (whose logs lack the entry) leads a new term and overwrites it on 2.
    c.heal();
    c.isolate(1);
    let mut leader = None;
    for _ in 0..100 {
        for id in [3, 4, 5] {
            c.tick(id);
        }
        c.stabilize();
        leader = c.leaders().into_iter().find(|l| [3, 4, 5].contains(l));
        if leader.is_some() {
            break;
        }
    }
    let leader = leader.expect("3, 4 or 5 wins without node 2's vote");
    c.propose(leader, "x");
    c.stabilize();
    assert_eq!(c.node(2).membership().voters, set(&[1, 2, 3, 4, 5]));
    assert_eq!(c.applied_data(2), ["x"]);
}

/// Thesis §4.2: a single-server change uses the new configuration directly (no joint
/// phase) and may change one voter only.
#[test]
fn single_server_change_adds_one_voter_without_a_joint_phase() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_empty_node(4);
    c.node_mut(1).change_membership_single(AddVoter(4)).unwrap();
    assert!(!c.node(1).membership().is_joint());
    c.stabilize();
    assert_eq!(c.node(4).membership().voters, set(&[1, 2, 3, 4]));
    let err = c
        .node_mut(1)
        .change_membership_single(Remove(4))
        .and_then(|_| c.node_mut(1).change_membership_single(Remove(3)));
    assert!(
        matches!(err, Err(MembershipError::ChangeInProgress { .. })),
        "{err:?}"
    );
}

/// Thesis §4.1: one change at a time; a second change while the first is uncommitted is
/// refused with a clear error.
#[test]
fn second_change_while_one_is_pending_is_refused() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(2);
    c.isolate(3);
    let first = c
        .node_mut(1)
        .change_membership_single(AddLearner(7))
        .unwrap();
    assert_eq!(
        c.node_mut(1).change_membership_single(AddLearner(8)),
        Err(MembershipError::ChangeInProgress { index: first.index })
    );
    assert_eq!(
        c.node_mut(1).change_membership(&[AddVoter(8), AddVoter(9)]),
        Err(MembershipError::ChangeInProgress { index: first.index })
    );
}

/// The 2015 fix (thesis §4.1): a leader appends a configuration only after it has committed
/// an entry of its own term.
#[test]
fn new_leader_refuses_changes_until_it_commits_in_its_term() {
    let mut c = Cluster::new(3);
    c.campaign_until_leader(1);
    assert!(!c.node(1).committed_in_current_term());
    assert_eq!(
        c.node_mut(1).change_membership_single(AddLearner(4)),
        Err(MembershipError::LeaderNotReady)
    );
    assert_eq!(
        c.node_mut(1).change_membership(&[AddVoter(4), AddVoter(5)]),
        Err(MembershipError::LeaderNotReady)
    );
    c.stabilize();
    assert!(c.node(1).committed_in_current_term());
    assert!(
        c.node_mut(1)
            .change_membership_single(AddLearner(4))
            .is_ok()
    );
}

/// Invalid changes are refused with a message that says what is wrong.
#[test]
fn invalid_changes_are_refused_with_a_reason() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let cases: &[(&[MembershipChange], &str)] = &[
        (&[AddVoter(2)], "already a voter"),
        (&[Remove(9)], "not a member"),
        (&[AddLearner(3)], "remove it first"),
        (&[AddVoter(4), Remove(4)], "twice"),
        (&[Remove(1), Remove(2), Remove(3)], "no voters"),
        (&[AddVoter(0)], "reserved"),
    ];
    for (changes, want) in cases {
        match c.node_mut(1).change_membership(changes) {
            Err(MembershipError::Invalid(msg)) => assert!(msg.contains(want), "{msg}"),
            other => panic!("{changes:?}: {other:?}"),
        }
    }
    assert_eq!(
        c.node_mut(2).change_membership_single(AddVoter(5)),
        Err(MembershipError::NotLeader { leader: Some(1) })
    );
}

/// Thesis §4.2.1: a learner receives the log but never votes, never campaigns and never
/// counts toward a majority; the leader reports its lag so it can be promoted when caught up.
#[test]
fn learner_replicates_but_never_counts_and_can_be_promoted() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_empty_node(4);
    c.node_mut(1)
        .change_membership_single(AddLearner(4))
        .unwrap();
    c.stabilize();
    c.propose(1, "a");
    c.stabilize();
    assert_eq!(c.applied_data(4), ["a"]);
    assert_eq!(c.node(1).replication_lag(4), Some(0));
    // With both voters away, the learner's ack is not a majority.
    c.isolate(2);
    c.isolate(3);
    let id = c.propose(1, "b");
    c.stabilize();
    assert!(c.node(1).commit_index() < id.index);
    assert_eq!(
        c.node(4).last_log_id().index,
        id.index,
        "the learner has it"
    );
    // The learner never campaigns.
    for _ in 0..100 {
        c.tick(4);
    }
    assert_eq!(c.node(4).role(), Role::Follower);
    c.heal();
    c.tick_all(3);
    c.node_mut(1).change_membership_single(AddVoter(4)).unwrap();
    c.stabilize();
    assert!(c.node(4).membership().voters.contains(&4), "promoted");
    assert!(c.node(4).membership().learners.is_empty());
}

/// Thesis §4.2.2: a leader removed from the configuration keeps leading until the change
/// commits, then steps down; the rest elect a new leader and the removed node does not
/// disrupt them.
#[test]
fn removed_leader_steps_down_after_commit_and_does_not_disrupt() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let id = c.node_mut(1).change_membership(&[Remove(1)]).unwrap();
    assert_eq!(
        c.node(1).role(),
        Role::Leader,
        "still leads the joint phase"
    );
    c.stabilize();
    assert!(c.node(2).commit_index() >= id.index);
    assert_eq!(
        c.node(1).role(),
        Role::Follower,
        "stepped down once C_new committed"
    );
    for _ in 0..60 {
        c.tick_all(1);
        if c.leaders().len() == 1 {
            break;
        }
    }
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 1);
    let term = c.node(leaders[0]).term();
    for _ in 0..200 {
        c.tick(1);
        c.stabilize();
    }
    assert_eq!(
        c.node(leaders[0]).term(),
        term,
        "the removed node did not disrupt"
    );
    assert_eq!(c.node(1).role(), Role::Follower);
}

/// A restarted node recovers its configuration from the configuration entries in its log.
#[test]
fn restart_recovers_the_configuration_from_the_log() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_empty_node(4);
    c.node_mut(1).change_membership_single(AddVoter(4)).unwrap();
    c.stabilize();
    c.restart(2);
    assert_eq!(c.node(2).membership().voters, set(&[1, 2, 3, 4]));
    let has_config_entry = c.applied[&2]
        .iter()
        .any(|e| matches!(e.payload, EntryPayload::Membership(_)));
    assert!(has_config_entry);
}

/// Addresses travel with the configuration entry (so a future leader can reach a node that
/// joined under another leader), stay while a removed voter is still in the outgoing
/// configuration, and go once it has left; an address for a non-member is refused.
#[test]
fn addresses_replicate_with_the_configuration_and_leave_with_the_node() {
    use std::collections::BTreeMap;
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_empty_node(4);
    let addresses = BTreeMap::from([(4, "10.0.0.4:7000".to_string())]);
    c.node_mut(1)
        .change_membership_with_addresses(&[AddLearner(4)], &addresses)
        .unwrap();
    c.stabilize();
    for id in 1..=4 {
        assert_eq!(
            c.node(id).membership().address(4),
            Some("10.0.0.4:7000"),
            "node {id}"
        );
    }
    let bogus = BTreeMap::from([(9, "nowhere:1".to_string())]);
    assert!(matches!(
        c.node_mut(1)
            .change_membership_with_addresses(&[AddVoter(4)], &bogus),
        Err(MembershipError::Invalid(_))
    ));
    let joint = c
        .node_mut(1)
        .change_membership(&[AddVoter(4), Remove(3)])
        .unwrap();
    let m = c.node(1).membership().clone();
    assert!(m.is_joint());
    assert_eq!(m.address(4), Some("10.0.0.4:7000"));
    c.stabilize();
    assert!(c.node(1).commit_index() > joint.index);
    let m = c.node(1).membership();
    assert!(!m.is_joint());
    assert_eq!(m.address(4), Some("10.0.0.4:7000"), "4 is now a voter");
    let removed = c.node_mut(1).change_membership(&[Remove(4)]).unwrap();
    assert!(
        c.node(1).membership().address(4).is_some(),
        "4 is still an outgoing voter at {removed:?}"
    );
    c.stabilize();
    assert_eq!(c.node(1).membership().address(4), None, "4 has left");
}

/// §7: a snapshot taken at the applied index records the configuration in effect there, even
/// when newer configurations are committed; the core keeps it for the runtime (a restarted
/// state machine that applied less than the commit index included).
#[test]
fn the_configuration_at_the_applied_index_is_kept_and_reported() {
    use dengine_core::{
        Entry, HardState, InitialState, Membership, MemoryStore, PersistRequest, Raft,
    };

    let base = Membership::new([1]);
    let first = Membership::new([1]).with_learners([2]);
    let second = Membership::new([1]).with_learners([2, 3]);
    let log = MemoryStore::new();
    let entries = vec![
        Entry::new(1, 1, EntryPayload::Blank),
        Entry::new(1, 2, EntryPayload::Membership(first.clone())),
        Entry::new(1, 3, EntryPayload::Normal("x=1".into())),
        Entry::new(1, 4, EntryPayload::Membership(second.clone())),
    ];
    log.persist_now(&PersistRequest::new(None, entries, true))
        .unwrap();
    let initial = InitialState {
        hard_state: HardState {
            term: 1,
            vote: Some(1),
            commit: 4,
        },
        membership: base.clone(),
        applied: 3,
        snapshot: None,
    };
    let mut node = Raft::new(crate::cluster::config(1), log, initial).unwrap();
    assert_eq!(node.committed_membership(), &second);
    assert_eq!(
        node.applied_membership(),
        &first,
        "the configuration as of index 3"
    );
    let ready = node.ready();
    assert_eq!(ready.committed_entries.last().map(|e| e.index), Some(4));
    node.on_applied(4);
    assert_eq!(node.applied_membership(), &second);

    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!(c.node(1).applied_membership(), &Membership::new([1, 2, 3]));
    c.add_empty_node(4);
    c.node_mut(1)
        .change_membership_single(AddLearner(4))
        .unwrap();
    c.stabilize();
    assert!(c.node(2).applied_membership().learners.contains(&4));
}

/// Thesis §4.2.1: a runtime promotes a learner once it has caught up; `replication_lag` is
/// how far behind the leader's log a member is (the leader itself counts what it has made
/// durable), and only a leader can say.
#[test]
fn replication_lag_counts_entries_a_member_lacks() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.stabilize();
    assert_eq!(c.node(1).replication_lag(2), Some(0));
    c.isolate(3);
    c.slow_disk(1);
    for i in 0..4 {
        c.propose(1, &format!("e{i}"));
    }
    c.stabilize();
    assert_eq!(c.node(1).replication_lag(2), Some(0), "2 has everything");
    assert_eq!(c.node(1).replication_lag(3), Some(4), "3 missed 4 entries");
    assert_eq!(
        c.node(1).replication_lag(1),
        Some(4),
        "the leader's own writes are held"
    );
    c.release_writes(1);
    assert_eq!(c.node(1).replication_lag(1), Some(0));
    assert_eq!(c.node(1).replication_lag(9), None, "not a member");
    assert_eq!(c.node(2).replication_lag(1), None, "a follower cannot say");
}

/// Thesis §4.1: the configuration in effect is the newest in the log; `membership_index`
/// names its entry (0 for the initial one), and it is committed once the commit index
/// reaches it.
#[test]
fn membership_index_names_the_configuration_entry_in_effect() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!(c.node(1).membership_index(), 0);
    c.add_empty_node(4);
    let entry = c
        .node_mut(1)
        .change_membership_single(AddLearner(4))
        .unwrap();
    assert_eq!(c.node(1).membership_index(), entry.index);
    c.stabilize();
    for id in 1..=4 {
        assert_eq!(c.node(id).membership_index(), entry.index, "node {id}");
    }
}

/// Thesis §4.1: a configuration entry takes effect when it is appended, uncommitted; if a new
/// leader's log removes it, the server falls back to the previous configuration in its log.
#[test]
fn a_truncated_configuration_entry_is_undone() {
    use dengine_core::{AppendRequest, Entry, EntryId, Membership, Message, MessageBody};

    let with_learner = Membership::new([1, 2, 3]).with_learners([4]);
    let mut node = crate::cluster::node_with_log(
        2,
        &[1, 2, 3],
        &[
            crate::cluster::blank(1, 1),
            Entry::new(1, 2, EntryPayload::Membership(with_learner.clone())),
        ],
        1,
    );
    assert_eq!(node.membership(), &with_learner, "in effect on append");
    assert_eq!(node.committed_membership_index(), 0);
    // The leader of term 2 never had it: its entry 2 replaces ours.
    node.step(Message {
        from: 3,
        to: 2,
        term: 2,
        body: MessageBody::Append(AppendRequest {
            prev: EntryId::new(1, 1),
            entries: vec![crate::cluster::blank(2, 2)],
            commit: 2,
        }),
    })
    .unwrap();
    assert_eq!(node.log_term(2).unwrap(), 2);
    assert_eq!(node.membership(), &Membership::new([1, 2, 3]));
    assert_eq!(
        (node.membership_index(), node.committed_membership_index()),
        (0, 0)
    );
}

/// `committed_membership_index` moves exactly when the committed configuration changes: not
/// when a change is appended, but when it commits.
#[test]
fn committed_membership_index_moves_when_the_change_commits() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_empty_node(4);
    c.isolate(2);
    c.isolate(3);
    let entry = c
        .node_mut(1)
        .change_membership_single(AddLearner(4))
        .unwrap();
    c.stabilize();
    assert_eq!(
        c.node(1).committed_membership_index(),
        0,
        "not committed yet"
    );
    c.heal();
    c.tick_all(4);
    assert_eq!(c.node(1).committed_membership_index(), entry.index);
    assert_eq!(c.node(2).committed_membership_index(), entry.index);
}
