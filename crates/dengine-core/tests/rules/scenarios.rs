//! Multi-node scenarios that replay the situations the Raft paper uses to justify its rules.

use dengine_core::{EntryId, MessageBody, Role};

use crate::cluster::Cluster;

fn manual(c: &mut dengine_core::Config) {
    // Full manual control: elections happen only when a test calls `campaign`.
    c.pre_vote = false;
    c.check_quorum = false;
}

/// Delivers queued messages until quiet, dropping those `drop` selects.
fn deliver_unless(c: &mut Cluster, drop: impl Fn(&dengine_core::Message) -> bool) {
    loop {
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for id in ids {
            c.drain(id);
        }
        let msgs: Vec<_> = c.network.drain(..).collect();
        if msgs.is_empty() {
            return;
        }
        for m in msgs {
            if !drop(&m) {
                c.deliver(m);
            }
        }
    }
}

/// Campaigns (repeatedly, through terms where others already voted) until `id` leads.
fn win(c: &mut Cluster, id: u64, drop: impl Fn(&dengine_core::Message) -> bool) {
    for _ in 0..5 {
        c.node_mut(id).campaign();
        deliver_unless(c, &drop);
        if c.node(id).role() == Role::Leader {
            return;
        }
    }
    panic!("node {id} could not win");
}

fn is_append(m: &dengine_core::Message) -> bool {
    matches!(m.body, MessageBody::Append(_))
}

/// Raft paper Figure 8 (§5.4.2). An entry of an old term that reaches a majority may still be
/// overwritten by a later leader, so a leader must not commit it by counting replicas. Here
/// S1 re-replicates 2@t1 to a majority in term 3 without committing it; S5 then wins term 4 and
/// overwrites it. Nobody may ever have applied it.
#[test]
fn figure_8_old_term_entry_on_a_majority_is_not_committed() {
    let mut c = Cluster::with_config(5, |cfg| {
        manual(cfg);
        cfg.max_message_bytes = 1; // one entry per append, so appends can be dropped singly
    });
    // (a) S1 leads term 1 and gets 2@t1 onto S2 only.
    c.elect(1);
    for peer in [3, 4, 5] {
        c.block(1, peer);
    }
    let x = c.propose(1, "x");
    c.stabilize();
    assert_eq!(x, EntryId::new(1, 2));
    assert_eq!(c.node(2).last_log_id(), x);
    // (b) S1 crashes; S5 wins term 2 with votes from S3, S4 and appends 2@t2, which reaches
    // nobody.
    c.heal();
    c.isolate(1);
    c.block(5, 2);
    c.block(2, 5);
    win(&mut c, 5, |m| m.from == 5 && is_append(m));
    c.isolate(5);
    assert_eq!(c.node(5).last_log_id(), EntryId::new(2, 2));
    // (c) S1 restarts (S4, S5 unreachable) and wins term 3 with S2 and S3; it replicates 2@t1
    // to S3 (now on a majority: S1, S2, S3) but its own 3@t3 reaches nobody.
    c.restart(1);
    c.heal();
    c.isolate(5);
    c.block(1, 4);
    c.block(4, 1);
    let from_s1 = |m: &dengine_core::Message| m.from == 1 && is_append(m);
    win(&mut c, 1, from_s1);
    // S1 sends 2@t1 (alone) to S2 and S3; their acks come back; 3@t3 goes nowhere.
    for peer in [2, 3] {
        let append = dengine_core::Message {
            from: 1,
            to: peer,
            term: 3,
            body: MessageBody::Append(dengine_core::AppendRequest {
                prev: EntryId::new(1, 1),
                entries: vec![crate::cluster::normal(1, 2, "x")],
                commit: 1,
            }),
        };
        c.deliver(append);
    }
    deliver_unless(&mut c, from_s1);
    assert_eq!(c.node(1).peer_progress(3).unwrap().match_index, 2);
    assert_eq!(c.node(1).term(), 3);
    assert_eq!(c.node(3).log_term(2).unwrap(), 1, "2@t1 is on S1, S2, S3");
    assert_eq!(
        c.node(1).commit_index(),
        1,
        "Figure 8: a majority holds 2@t1, but it is not of the leader's term"
    );
    // (d) S1 crashes; S5 restarts and wins with S2, S3, S4 (its last term 2 beats their 1) and overwrites
    // index 2 everywhere.
    c.heal();
    c.isolate(1);
    c.restart(5);
    win(&mut c, 5, |_| false);
    assert!(c.node(5).term() >= 4);
    c.propose(5, "y");
    c.stabilize();
    c.heal();
    c.tick_all(5);
    c.stabilize();
    for id in 1..=5 {
        assert!(
            !c.applied_data(id).contains(&"x".to_string()),
            "node {id} applied an entry that was later overwritten"
        );
        assert_eq!(c.applied_data(id), ["y"], "node {id}");
    }
}

/// §5.3 / Figure 7: a follower with extra uncommitted entries from a deposed leader and a
/// follower missing entries are both repaired to the new leader's log.
#[test]
fn log_repair_of_followers_with_conflicting_and_missing_entries() {
    let mut c = Cluster::with_config(3, manual);
    c.elect(1);
    c.propose(1, "a");
    c.stabilize();
    // Node 1, cut off, keeps appending entries that never commit.
    c.isolate(1);
    for i in 0..5 {
        c.propose(1, &format!("lost{i}"));
    }
    c.stabilize();
    // Node 2 leads a new term with node 3, which then misses its last entries.
    c.heal();
    c.isolate(1);
    c.elect(2);
    c.propose(2, "b");
    c.stabilize();
    c.block(2, 3);
    c.propose(2, "c");
    c.stabilize();
    assert!(c.node(3).last_log_id().index < c.node(2).last_log_id().index);
    c.heal();
    c.tick_all(3);
    c.stabilize();
    let leader_log = c.node(2).last_log_id();
    for id in [1, 3] {
        assert_eq!(c.node(id).last_log_id(), leader_log, "node {id} repaired");
        assert_eq!(c.applied_data(id), ["a", "b", "c"], "node {id}");
    }
}

/// A node restarted from its durable log keeps every entry it acknowledged and rejoins.
#[test]
fn restarted_follower_keeps_acknowledged_entries_and_catches_up() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.stabilize();
    c.restart(3);
    assert_eq!(c.node(3).last_log_id(), c.node(1).last_log_id());
    c.propose(1, "b");
    c.stabilize();
    c.tick_all(3);
    assert_eq!(c.node(3).commit_index(), c.node(1).commit_index());
}

/// A crash loses writes that were never reported durable, and nothing that was acknowledged
/// depended on them: the cluster still holds every committed entry.
#[test]
fn crash_before_fsync_loses_only_unacknowledged_writes() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.slow_disk(2);
    c.slow_disk(3);
    let id = c.propose(1, "a");
    c.stabilize();
    assert!(c.node(1).commit_index() < id.index, "nobody acknowledged");
    c.restart(2);
    c.restart(3);
    assert!(
        c.node(2).last_log_id().index < id.index,
        "unsynced write lost"
    );
    c.tick_all(5);
    assert_eq!(
        c.node(1).commit_index(),
        id.index,
        "re-replicated after restart"
    );
}
