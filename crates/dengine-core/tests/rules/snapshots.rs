//! Snapshots and log compaction (Raft paper §7, thesis §5).

use dengine_core::{
    AppendResponse, EntryId, LogReader, Membership, MembershipChange, Message, MessageBody,
    ReplicationState, SnapshotError, SnapshotMeta,
};

use crate::cluster::{Cluster, Node, blank, node_with_log, persist_now};

fn is_snapshot(m: &Message) -> bool {
    matches!(m.body, MessageBody::InstallSnapshot(_))
}

/// Ticks the leader and routes messages until it sends a snapshot to 3; drops the snapshot
/// when `lose_it`.
fn run_until_snapshot_sent(c: &mut Cluster, lose_it: bool) {
    for _ in 0..30 {
        c.tick(1);
        for _ in 0..10 {
            for id in [1, 2, 3] {
                c.drain(id);
            }
            let msgs: Vec<Message> = c.network.drain(..).collect();
            if msgs.is_empty() {
                break;
            }
            let mut sent = false;
            for m in msgs {
                if is_snapshot(&m) {
                    sent = true;
                    if lose_it {
                        continue;
                    }
                }
                c.deliver(m);
            }
            if sent {
                return;
            }
        }
    }
    panic!("no snapshot was sent");
}

fn install(from: u64, to: u64, term: u64, last: EntryId) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::InstallSnapshot(SnapshotMeta {
            last_included: last,
            membership: Membership::new([1, 2, 3]),
        }),
    }
}

/// Thesis §5.1: once the state machine has a snapshot, the log before it may be purged,
/// minus `snapshot_trailing_entries` kept for followers that lag a little.
#[test]
fn snapshot_lets_the_log_be_purged_keeping_trailing_entries() {
    let mut c = Cluster::with_config(3, |c| c.snapshot_trailing_entries = 2);
    c.elect(1);
    for i in 0..6 {
        c.propose(1, &format!("e{i}"));
    }
    c.stabilize();
    let snap = c.take_snapshot(1);
    assert_eq!(snap.index, 7);
    c.drain(1);
    assert_eq!(
        c.node(1).log_reader().first_index(),
        6,
        "purged up to 7 - 2 = 5"
    );
    assert_eq!(c.node(1).first_log_index(), 6, "the core sees the purge");
    assert_eq!(c.node(1).latest_snapshot().unwrap().last_included, snap);
}

/// A snapshot may only cover applied entries, and must name the entry the log holds.
#[test]
fn snapshot_reports_are_checked() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let applied = c.node(1).applied_index();
    let ahead = SnapshotMeta {
        last_included: EntryId::new(1, applied + 5),
        membership: Membership::new([1, 2, 3]),
    };
    assert!(matches!(
        c.node_mut(1).on_snapshot_created(ahead),
        Err(SnapshotError::AheadOfApplied { .. })
    ));
    let wrong_term = SnapshotMeta {
        last_included: EntryId::new(9, applied),
        membership: Membership::new([1, 2, 3]),
    };
    assert!(matches!(
        c.node_mut(1).on_snapshot_created(wrong_term),
        Err(SnapshotError::TermMismatch { .. })
    ));
}

/// §7: a follower that needs entries the leader has compacted is sent the snapshot (progress
/// state "snapshot"), installs it and then catches up from the log.
#[test]
fn lagging_follower_catches_up_by_snapshot() {
    let mut c = Cluster::with_config(3, |c| c.snapshot_trailing_entries = 0);
    c.elect(1);
    c.isolate(3);
    for i in 0..10 {
        c.propose(1, &format!("e{i}"));
    }
    c.stabilize();
    c.take_snapshot(1);
    c.drain(1);
    assert!(c.node(1).log_reader().first_index() > 2);
    c.heal();
    run_until_snapshot_sent(&mut c, false);
    c.stabilize();
    c.propose(1, "after");
    c.stabilize();
    let want: Vec<String> = (0..10)
        .map(|i| format!("e{i}"))
        .chain(["after".to_string()])
        .collect();
    assert_eq!(c.applied_data(3), want);
    assert_eq!(c.node(3).last_log_id(), c.node(1).last_log_id());
    assert_eq!(
        c.node(1).peer_progress(3).unwrap().state,
        ReplicationState::Replicate
    );
}

/// §7: a snapshot older than the follower's commit index is stale: nothing is installed, and
/// the follower acknowledges so the leader moves on.
#[test]
fn stale_snapshot_is_ignored() {
    let mut node = node_with_log(2, &[1, 2, 3], &[blank(1, 1), blank(1, 2), blank(1, 3)], 1);
    // Learn commit 3 from the leader.
    node.step(Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Heartbeat(dengine_core::Heartbeat {
            commit: 3,
            round: 1,
        }),
    })
    .unwrap();
    let r = node.ready();
    persist_now(&mut node, &r);
    node.step(install(1, 2, 1, EntryId::new(1, 2))).unwrap();
    let r = node.ready();
    assert!(r.snapshot_to_install.is_none());
    assert!(r.messages.iter().any(|m| matches!(
        m.body,
        MessageBody::AppendResponse(AppendResponse::Accepted { .. })
    )));
    assert_eq!(node.last_log_id(), EntryId::new(1, 3), "log untouched");
}

/// §7: "If existing log entry has same index and term as snapshot's last included entry,
/// retain log entries following it": no install, the suffix is kept.
#[test]
fn snapshot_of_a_prefix_of_the_log_keeps_the_suffix() {
    let mut node = node_with_log(
        2,
        &[1, 2, 3],
        &[blank(1, 1), blank(1, 2), blank(1, 3), blank(1, 4)],
        1,
    );
    node.step(install(1, 2, 1, EntryId::new(1, 3))).unwrap();
    let r = node.ready();
    assert!(r.snapshot_to_install.is_none());
    assert_eq!(node.last_log_id(), EntryId::new(1, 4));
    assert_eq!(node.commit_index(), 3);
}

/// §7: otherwise the follower's state is replaced: the runtime installs the snapshot, the
/// log restarts after it, and the follower acknowledges the snapshot's last entry.
#[test]
fn conflicting_log_is_replaced_by_the_snapshot() {
    let mut node = node_with_log(2, &[1, 2, 3], &[blank(1, 1), blank(2, 2), blank(2, 3)], 2);
    let last = EntryId::new(3, 5);
    node.step(install(1, 2, 3, last)).unwrap();
    let r = node.ready();
    persist_now(&mut node, &r);
    assert_eq!(r.snapshot_to_install.as_ref().unwrap().last_included, last);
    assert!(
        !r.messages
            .iter()
            .any(|m| matches!(m.body, MessageBody::AppendResponse(_))),
        "no answer before the install is done"
    );
    let meta = r.snapshot_to_install.clone().unwrap();
    node.log_reader().reset_to_snapshot_now(&meta).unwrap();
    node.on_snapshot_installed(last);
    let r = node.ready();
    assert_eq!(
        r.messages
            .iter()
            .map(|m| m.body.clone())
            .collect::<Vec<_>>(),
        [MessageBody::AppendResponse(AppendResponse::Accepted {
            last
        })]
    );
    assert_eq!(node.last_log_id(), last);
    assert_eq!((node.commit_index(), node.applied_index()), (5, 5));
}

/// A failed snapshot transfer (reported by the runtime) puts the follower back in probe; the
/// snapshot is sent again.
#[test]
fn snapshot_failure_goes_back_to_probe_and_retries() {
    let mut c = Cluster::with_config(3, |c| c.snapshot_trailing_entries = 0);
    c.elect(1);
    c.isolate(3);
    for i in 0..5 {
        c.propose(1, &format!("e{i}"));
    }
    c.stabilize();
    c.take_snapshot(1);
    c.drain(1);
    c.heal();
    run_until_snapshot_sent(&mut c, true); // the snapshot is lost on the way
    assert!(matches!(
        c.node(1).peer_progress(3).unwrap().state,
        ReplicationState::Snapshot { .. }
    ));
    c.node_mut(1).report_snapshot(3, false);
    assert_eq!(
        c.node(1).peer_progress(3).unwrap().state,
        ReplicationState::Probe
    );
    c.tick_all(3);
    assert_eq!(c.applied_data(3).len(), 5);
}

/// Thesis §5.1: a node restarts from its snapshot (state and configuration) plus the log
/// after it, including configuration entries appended since.
#[test]
fn restart_from_snapshot_and_log_recovers_state_and_membership() {
    let mut c = Cluster::with_config(3, |c| c.snapshot_trailing_entries = 0);
    c.elect(1);
    c.propose(1, "a");
    c.stabilize();
    c.take_snapshot(2);
    c.drain(2);
    c.add_empty_node(4);
    c.node_mut(1)
        .change_membership_single(MembershipChange::AddLearner(4))
        .unwrap();
    c.propose(1, "b");
    c.stabilize();
    c.restart(2);
    let m = c.node(2).membership();
    assert!(
        m.learners.contains(&4),
        "config entry after the snapshot recovered"
    );
    assert!(
        c.node(2).log_reader().first_index() > 1,
        "restarted from a compacted log"
    );
    c.tick_all(3);
    assert_eq!(c.node(2).commit_index(), c.node(1).commit_index());
}

/// Follower 2 (log 1 2 2, term 2) after the term-3 leader's snapshot ending at 5 was handed
/// to its runtime to install.
fn follower_installing_snapshot() -> Node {
    let mut node = node_with_log(2, &[1, 2, 3], &[blank(1, 1), blank(2, 2), blank(2, 3)], 2);
    node.step(install(1, 2, 3, EntryId::new(3, 5))).unwrap();
    let r = node.ready();
    persist_now(&mut node, &r);
    assert!(r.snapshot_to_install.is_some());
    node
}

/// An append from the term-3 leader that continues the follower's current log (1 2 2).
fn append_after_3() -> Message {
    Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::Append(dengine_core::AppendRequest {
            prev: EntryId::new(2, 3),
            entries: vec![blank(3, 4)],
            commit: 0,
        }),
    }
}

/// §7: while a snapshot is being installed the log is about to be replaced, so appends that
/// arrive meanwhile are not applied to it (nor answered); the leader sends again once the
/// snapshot is acknowledged.
#[test]
fn appends_during_a_snapshot_install_are_ignored() {
    let mut node = follower_installing_snapshot();
    node.step(append_after_3()).unwrap();
    assert_eq!(node.last_log_id(), EntryId::new(2, 3), "log untouched");
    let r = node.ready();
    assert!(
        r.persist.as_ref().is_none_or(|w| w.entries.is_empty()),
        "nothing to write"
    );
    assert!(
        !r.messages
            .iter()
            .any(|m| matches!(m.body, MessageBody::AppendResponse(_))),
        "no answer"
    );
}

/// §7 with a failing runtime: when the runtime cannot install a snapshot it aborts the
/// install; the follower's log is untouched, it takes appends again, and the leader's next
/// snapshot is handed out afresh.
#[test]
fn an_aborted_install_leaves_the_log_and_takes_the_snapshot_again() {
    let mut node = follower_installing_snapshot();
    node.abort_snapshot_install();
    assert_eq!(node.last_log_id(), EntryId::new(2, 3), "log untouched");
    let last = EntryId::new(3, 5);
    node.step(install(1, 2, 3, last)).unwrap();
    let r = node.ready();
    assert_eq!(
        r.snapshot_to_install.map(|m| m.last_included),
        Some(last),
        "handed out again"
    );
    node.abort_snapshot_install();
    node.step(append_after_3()).unwrap();
    assert_eq!(
        node.last_log_id(),
        EntryId::new(3, 4),
        "appends are taken again"
    );
}
