//! Log replication and commitment: Raft paper §5.3 (log replication), §5.4.2 (committing
//! entries from previous terms), thesis §10.2.1 (leader writes in parallel), and the flow
//! control of each follower's progress.

use dengine_core::{
    AppendRequest, AppendResponse, ConflictHint, Entry, EntryId, Message, MessageBody,
    ReplicationState, Role,
};

use crate::cluster::{Cluster, Node, blank, node_with_log, normal, persist_now, settle};

fn append(
    from: u64,
    to: u64,
    term: u64,
    prev: EntryId,
    entries: Vec<Entry>,
    commit: u64,
) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::Append(AppendRequest {
            prev,
            entries,
            commit,
        }),
    }
}

/// Steps `msg` into `node`, persists whatever it asks, and returns its append responses.
fn responses(node: &mut Node, msg: Message) -> Vec<AppendResponse> {
    node.step(msg).unwrap();
    settle(node)
        .into_iter()
        .filter_map(|m| match m.body {
            MessageBody::AppendResponse(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn follower_log() -> Node {
    // Indexes 1..=5 with terms 1 1 2 2 2.
    node_with_log(
        2,
        &[1, 2, 3],
        &[
            blank(1, 1),
            blank(1, 2),
            blank(2, 3),
            blank(2, 4),
            blank(2, 5),
        ],
        2,
    )
}

fn entries_of(node: &Node) -> Vec<EntryId> {
    let last = node.last_log_id().index;
    (1..=last)
        .map(|i| EntryId::new(node.log_term(i).unwrap(), i))
        .collect()
}

/// §5.3: the follower refuses an append whose prev entry it does not hold; with a log that is
/// too short it says where it ends.
#[test]
fn append_rejected_when_prev_is_beyond_the_log() {
    let mut node = follower_log();
    let got = responses(&mut node, append(1, 2, 3, EntryId::new(3, 8), vec![], 0));
    assert_eq!(
        got,
        [AppendResponse::Rejected {
            rejected_index: 8,
            hint: ConflictHint::LogTooShort { last_index: 5 }
        }]
    );
}

/// §5.3 (fast backtracking): with a conflicting term at prev, the follower names that term and
/// the first index it holds for it, so the leader can skip the whole term.
#[test]
fn append_rejected_with_conflicting_term_and_its_first_index() {
    let mut node = follower_log();
    let got = responses(&mut node, append(1, 2, 3, EntryId::new(3, 5), vec![], 0));
    assert_eq!(
        got,
        [AppendResponse::Rejected {
            rejected_index: 5,
            hint: ConflictHint::TermConflict {
                term: 2,
                first_index: 3
            }
        }]
    );
    assert_eq!(entries_of(&node).len(), 5, "a rejection changes nothing");
}

/// §5.3: an existing entry that conflicts with a new one is deleted with all that follow it.
#[test]
fn conflicting_suffix_is_replaced() {
    let mut node = follower_log();
    let got = responses(
        &mut node,
        append(1, 2, 3, EntryId::new(2, 3), vec![blank(3, 4)], 0),
    );
    assert_eq!(
        got,
        [AppendResponse::Accepted {
            last: EntryId::new(3, 4)
        }]
    );
    assert_eq!(
        entries_of(&node),
        [
            EntryId::new(1, 1),
            EntryId::new(1, 2),
            EntryId::new(2, 3),
            EntryId::new(3, 4)
        ]
    );
    assert_eq!(node.log_reader().hard_state().term, 3);
}

/// Classic bug 4: a stale or reordered append whose entries all match must not truncate the
/// entries after them; the ack covers only what the message showed to match.
#[test]
fn stale_append_never_truncates_matching_entries() {
    let mut node = follower_log();
    let got = responses(
        &mut node,
        append(
            1,
            2,
            2,
            EntryId::new(1, 1),
            vec![blank(1, 2), blank(2, 3)],
            0,
        ),
    );
    assert_eq!(
        got,
        [AppendResponse::Accepted {
            last: EntryId::new(2, 3)
        }]
    );
    assert_eq!(entries_of(&node).len(), 5, "entries 4 and 5 survive");
}

/// A duplicated append is harmless: the same answer, the same log.
#[test]
fn duplicate_append_is_idempotent() {
    let mut node = follower_log();
    let msg = append(1, 2, 3, EntryId::new(2, 5), vec![blank(3, 6)], 0);
    let first = responses(&mut node, msg.clone());
    let second = responses(&mut node, msg);
    assert_eq!(first, second);
    assert_eq!(node.last_log_id(), EntryId::new(3, 6));
}

/// §5.3: the follower commits min(leaderCommit, index of last new entry): never an entry the
/// leader has not shown to match (its own longer tail may differ).
#[test]
fn follower_commit_is_limited_to_entries_shown_to_match() {
    let mut node = follower_log();
    responses(&mut node, append(1, 2, 3, EntryId::new(1, 2), vec![], 9));
    assert_eq!(node.commit_index(), 2);
    responses(&mut node, append(1, 2, 3, EntryId::new(2, 4), vec![], 9));
    assert_eq!(node.commit_index(), 4);
}

/// Appends that reach below the follower's commit index are trimmed: committed entries are
/// never rewritten, and the ack still reports what matched.
#[test]
fn append_below_commit_index_does_not_touch_committed_entries() {
    let mut node = follower_log();
    responses(&mut node, append(1, 2, 2, EntryId::new(2, 5), vec![], 5));
    assert_eq!(node.commit_index(), 5);
    let got = responses(
        &mut node,
        append(
            1,
            2,
            2,
            EntryId::new(1, 2),
            vec![blank(2, 3), blank(2, 4)],
            5,
        ),
    );
    assert_eq!(
        got,
        [AppendResponse::Accepted {
            last: EntryId::new(2, 4)
        }]
    );
    assert_eq!(entries_of(&node).len(), 5);
}

/// A malformed append (entries not consecutive after prev) is refused without a panic and
/// without touching the log.
#[test]
fn malformed_append_is_ignored() {
    let mut node = follower_log();
    let got = responses(
        &mut node,
        append(1, 2, 3, EntryId::new(2, 5), vec![blank(3, 7)], 0),
    );
    assert!(got.is_empty());
    assert_eq!(node.last_log_id(), EntryId::new(2, 5));
}

/// Thesis §10.2.1: the leader counts itself toward a majority only for entries it has
/// persisted. With its disk held and one follower unreachable, one follower's ack is not a
/// majority; once the leader's write lands, the entry commits.
#[test]
fn leader_counts_itself_only_for_persisted_entries() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    c.slow_disk(1);
    let id = c.propose(1, "x");
    c.stabilize();
    assert_eq!(c.node(1).peer_progress(2).unwrap().match_index, id.index);
    assert!(
        c.node(1).commit_index() < id.index,
        "leader's own write not durable"
    );
    c.release_writes(1);
    c.stabilize();
    assert_eq!(c.node(1).commit_index(), id.index);
}

/// Thesis §10.2.1, the other half: followers alone can form the majority while the leader's
/// own write is still in flight.
#[test]
fn a_majority_of_followers_commits_without_the_leaders_write() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.slow_disk(1);
    let id = c.propose(1, "x");
    c.stabilize();
    assert_eq!(c.node(1).commit_index(), id.index);
    assert!(
        c.applied_data(1).is_empty(),
        "but the leader applies only what it holds durably"
    );
    c.release_writes(1);
    c.stabilize();
    assert_eq!(c.applied_data(1), ["x"]);
}

/// Classic bug 3: a follower acknowledges entries only once they are durable. With its disk
/// held, no AppendResponse leaves it, and nothing commits on its word.
#[test]
fn follower_acks_only_durable_entries() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    c.slow_disk(2);
    let id = c.propose(1, "x");
    c.stabilize();
    assert!(c.node(1).commit_index() < id.index);
    c.release_writes(2);
    c.stabilize();
    assert_eq!(c.node(1).commit_index(), id.index);
}

/// Classic bug 11: acknowledgements are by (term, index); an ack naming an entry the leader
/// does not hold at that index does not count.
#[test]
fn ack_for_an_entry_the_leader_does_not_hold_is_ignored() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(2);
    c.isolate(3);
    let id = c.propose(1, "x");
    c.drain(1);
    c.network.clear();
    let bogus = Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendResponse(AppendResponse::Accepted {
            last: EntryId::new(term - 1, id.index),
        }),
    };
    c.node_mut(1).step(bogus).unwrap();
    assert!(c.node(1).peer_progress(2).unwrap().match_index < id.index);
    assert!(c.node(1).commit_index() < id.index);
}

/// Probe state: one append at a time until the follower's position is known; then replicate
/// state pipelines appends up to `max_inflight_messages`.
#[test]
fn probe_then_pipelined_replication_within_the_inflight_window() {
    let mut c = Cluster::with_config(3, |c| {
        c.max_inflight_messages = 3;
        c.max_message_bytes = 1; // one entry per message
    });
    c.elect(1);
    assert_eq!(
        c.node(1).peer_progress(2).unwrap().state,
        ReplicationState::Replicate
    );
    c.block(2, 1); // acks from 2 are lost: its window fills up
    for i in 0..10 {
        c.propose(1, &format!("e{i}"));
    }
    c.drain(1);
    let to_2 = c.network.iter().filter(|m| m.to == 2).count();
    assert_eq!(to_2, 3, "window of 3 messages");
    let p = c.node(1).peer_progress(2).unwrap();
    assert_eq!(p.inflight_messages, 3);
    c.heal();
    c.stabilize();
    let last = c.node(1).last_log_id().index;
    assert_eq!(c.node(1).peer_progress(2).unwrap().match_index, last);
}

/// `max_message_bytes` bounds entries per append (one oversized entry still goes alone).
#[test]
fn max_message_bytes_splits_appends() {
    let mut c = Cluster::with_config(2, |c| c.max_message_bytes = 2 * (24 + 4));
    c.elect(1);
    for i in 0..6 {
        c.propose(1, &format!("ab{i:02}")); // 4-byte payloads
    }
    c.drain(1);
    let sizes: Vec<usize> = c
        .network
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Append(a) => Some(a.entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, [2, 2, 2]);
}

/// §5.3 end: with conflict hints, repairing a follower whose log diverges by a whole term
/// takes one round trip per term, not one per entry.
#[test]
fn conflict_hint_repairs_a_long_divergent_tail_in_few_round_trips() {
    // Leader (term 3): entries 1..=3 of term 1, then its blank at 4.
    // Follower: 1..=3 of term 1, then 4..=40 of term 2 (from a deposed leader).
    let mut leader_entries = vec![blank(1, 1), blank(1, 2), blank(1, 3)];
    let mut follower_entries = leader_entries.clone();
    for i in 4..=40 {
        follower_entries.push(normal(2, i, "stale"));
    }
    leader_entries.push(blank(3, 4));
    let mut leader = node_with_log(1, &[1, 2], &leader_entries, 3);
    let mut follower = node_with_log(2, &[1, 2], &follower_entries, 2);
    // Elect node 1 at term 4 by hand (2 votes for it: same last term? no: leader's log has
    // the higher last term, 3 > 2).
    leader.campaign();
    let mut round_trips = 0;
    for _ in 0..20 {
        let to_follower = settle(&mut leader);
        if to_follower.is_empty() {
            break;
        }
        for m in to_follower {
            if matches!(m.body, MessageBody::Append(_)) {
                round_trips += 1;
            }
            follower.step(m).unwrap();
        }
        for m in settle(&mut follower) {
            leader.step(m).unwrap();
        }
    }
    assert_eq!(leader.role(), Role::Leader);
    assert_eq!(follower.last_log_id(), leader.last_log_id());
    assert_eq!(follower.log_term(40).ok(), None, "stale tail removed");
    assert!(
        round_trips <= 4,
        "{round_trips} appends to repair 37 entries"
    );
}

/// Heartbeats carry the commit index capped at the follower's match index (a follower with
/// an unverified tail must not commit it).
#[test]
fn heartbeat_commit_is_capped_at_the_followers_match_index() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.block(1, 3);
    c.propose(1, "x");
    c.stabilize();
    let commit = c.node(1).commit_index();
    let m3 = c.node(1).peer_progress(3).unwrap().match_index;
    assert!(m3 < commit);
    c.heal();
    c.block(3, 1); // 3 hears heartbeats but its acks are lost
    for _ in 0..3 {
        c.tick(1);
    }
    c.drain(1);
    let commits: Vec<u64> = c
        .network
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Heartbeat(h) if m.to == 3 => Some(h.commit),
            _ => None,
        })
        .collect();
    assert!(!commits.is_empty());
    assert!(
        commits.iter().all(|&h| h == m3),
        "{commits:?} vs match {m3}"
    );
}

/// §5.4.2 / Figure 8, classic bug 1: a leader never commits an entry of an earlier term by
/// counting replicas; it commits it only together with an entry of its own term.
#[test]
fn leader_does_not_commit_an_old_term_entry_by_counting_replicas() {
    // Node 1 leads term 4 with log: 1@t1, 2@t2 (old, uncommitted), 3@t4 (its blank).
    let leader_log = [blank(1, 1), blank(2, 2)];
    let mut leader = node_with_log(1, &[1, 2, 3], &leader_log, 3);
    leader.campaign();
    let grant = |from, pre_vote| Message {
        from,
        to: 1,
        term: 4,
        body: MessageBody::VoteResponse(dengine_core::VoteResponse {
            pre_vote,
            granted: true,
        }),
    };
    leader.step(grant(2, true)).unwrap();
    let r = leader.ready();
    persist_now(&mut leader, &r);
    leader.step(grant(2, false)).unwrap();
    assert_eq!(leader.role(), Role::Leader);
    let r = leader.ready();
    persist_now(&mut leader, &r);
    assert_eq!(leader.last_log_id(), EntryId::new(4, 3));
    // Follower 2 acknowledges the old entry 2@t2 only: a majority (1 and 2) holds it, yet it
    // is of term 2, so it must not commit.
    let ack = |last| Message {
        from: 2,
        to: 1,
        term: 4,
        body: MessageBody::AppendResponse(AppendResponse::Accepted { last }),
    };
    leader.step(ack(EntryId::new(2, 2))).unwrap();
    assert_eq!(
        leader.commit_index(),
        0,
        "Figure 8: no commit by counting old-term replicas"
    );
    leader.step(ack(EntryId::new(4, 3))).unwrap();
    assert_eq!(
        leader.commit_index(),
        3,
        "committing 3@t4 commits 2@t2 indirectly"
    );
}

/// Node 1 elected leader over node 2 with the votes stepped in by hand; returns it with the
/// appends of its first turn (its probes to node 2).
fn elected_leader(entries: &[Entry], term: u64) -> (Node, Vec<AppendRequest>) {
    let mut leader = node_with_log(1, &[1, 2], entries, term);
    leader.campaign();
    for _ in 0..3 {
        if leader.role() == Role::Leader {
            break;
        }
        let pre_vote = leader.role() == Role::PreCandidate;
        let vote_term = if pre_vote {
            leader.term() + 1
        } else {
            leader.term()
        };
        settle(&mut leader);
        leader
            .step(Message {
                from: 2,
                to: 1,
                term: vote_term,
                body: MessageBody::VoteResponse(dengine_core::VoteResponse {
                    pre_vote,
                    granted: true,
                }),
            })
            .unwrap();
    }
    assert_eq!(leader.role(), Role::Leader);
    let appends = appends_from(&mut leader);
    (leader, appends)
}

/// Settles `node` and returns the appends it sent.
fn appends_from(node: &mut Node) -> Vec<AppendRequest> {
    settle(node)
        .into_iter()
        .filter_map(|m| match m.body {
            MessageBody::Append(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn rejection(term: u64, rejected_index: u64, hint: ConflictHint) -> Message {
    Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendResponse(AppendResponse::Rejected {
            rejected_index,
            hint,
        }),
    }
}

/// §5.3 end, leader side: when the follower's conflicting term is one the leader also holds,
/// both logs agree up to the leader's last entry of that term (Log Matching), so the next
/// append starts right after it.
#[test]
fn after_a_term_conflict_the_leader_continues_after_its_last_entry_of_that_term() {
    // Leader: terms 1 1 2 2 3, elected in term 4 (blank at 6). The follower holds term 2 at
    // index 5 (1 1 2 2 2, from the old term-2 leader).
    let log = [
        blank(1, 1),
        blank(1, 2),
        blank(2, 3),
        blank(2, 4),
        blank(3, 5),
    ];
    let (mut leader, probes) = elected_leader(&log, 3);
    assert_eq!(probes[0].prev, EntryId::new(3, 5));
    let hint = ConflictHint::TermConflict {
        term: 2,
        first_index: 3,
    };
    leader.step(rejection(4, 5, hint)).unwrap();
    let next = appends_from(&mut leader);
    assert_eq!(
        next[0].prev,
        EntryId::new(2, 4),
        "the leader's last term-2 entry matches; continue after it"
    );
}

/// §5.3 end, leader side: when the leader holds no entry of the follower's conflicting term,
/// every follower entry of that term conflicts: the next append starts at the first of them
/// (or right after the leader's last entry of an earlier term, if that comes first).
#[test]
fn after_a_term_conflict_the_leader_skips_the_followers_whole_term() {
    // Leader: terms 1 1 1 1 3, elected in term 4. The follower: 1 1 1 1 2 (term 2 from 5).
    let log = [
        blank(1, 1),
        blank(1, 2),
        blank(1, 3),
        blank(1, 4),
        blank(3, 5),
    ];
    let (mut leader, probes) = elected_leader(&log, 3);
    assert_eq!(probes[0].prev, EntryId::new(3, 5));
    let hint = ConflictHint::TermConflict {
        term: 2,
        first_index: 5,
    };
    leader.step(rejection(4, 5, hint)).unwrap();
    let next = appends_from(&mut leader);
    assert_eq!(
        next[0].prev,
        EntryId::new(1, 4),
        "nothing before the follower's term-2 entries conflicts"
    );
}
