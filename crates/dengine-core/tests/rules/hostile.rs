//! Rules at the protocol's trust boundary: what a forged, broken or forgetful peer can and
//! cannot do to a healthy cluster. Raft is not Byzantine-tolerant (a member with valid
//! credentials can still lie), but no single message may end a cluster, and a member that
//! lost its storage must not keep counting as if it remembered (thesis §4.2.3 stickiness;
//! §5.3 match indexes; §4.1 configurations).

use dengine_core::{
    AppendRequest, AppendResponse, ConflictHint, Entry, EntryId, HardState, Heartbeat,
    HeartbeatResponse, InitialState, LogReader, MAX_TERM, Membership, MembershipChange,
    MembershipError, MemoryStore, Message, MessageBody, PeerRegression, PersistRequest, Raft, Role,
    StepError, StorageError, VoteRequest,
};

use crate::cluster::{Cluster, blank, config};

fn heartbeat(from: u64, to: u64, term: u64) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::Heartbeat(Heartbeat {
            commit: 0,
            round: 1,
        }),
    }
}

fn vote(from: u64, to: u64, term: u64, leader_transfer: bool) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::VoteRequest(VoteRequest {
            pre_vote: false,
            last_log: EntryId::new(term, 1_000),
            leader_transfer,
        }),
    }
}

/// No message may move a node to a term from which there is no next term: terms and indexes
/// beyond 2^62 are refused before they touch any state.
#[test]
fn terms_and_indexes_beyond_the_bound_are_refused_and_change_nothing() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    for bad in [u64::MAX, MAX_TERM + 1] {
        let err = c.node_mut(2).step(heartbeat(1, 2, bad)).unwrap_err();
        assert!(
            matches!(err, StepError::OutOfRange { from: 1, field: "term", value } if value == bad),
            "{err:?}"
        );
    }
    let append = Message {
        from: 1,
        to: 2,
        term,
        body: MessageBody::Append(AppendRequest {
            prev: EntryId::new(term, u64::MAX),
            entries: vec![],
            commit: 0,
        }),
    };
    assert!(matches!(
        c.node_mut(2).step(append),
        Err(StepError::OutOfRange {
            field: "prev.index",
            ..
        })
    ));
    let mut v = vote(3, 2, term + 1, false);
    if let MessageBody::VoteRequest(r) = &mut v.body {
        r.last_log = EntryId::new(u64::MAX, 1);
    }
    assert!(c.node_mut(2).step(v).is_err());
    assert_eq!(c.node(2).term(), term);
    assert_eq!(c.node(2).leader(), Some(1));
    c.stabilize();
    assert_eq!(c.leaders(), [1], "the cluster carries on as before");
}

/// The largest accepted term still leaves room for elections: `term + 1` never overflows.
#[test]
fn a_cluster_at_the_largest_accepted_term_can_still_elect() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(2).step(heartbeat(3, 2, MAX_TERM)).unwrap();
    c.stabilize();
    assert_eq!(c.node(2).term(), MAX_TERM);
    c.tick_all(60);
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    assert!(c.node(leaders[0]).term() > MAX_TERM);
}

/// Thesis §4.2.3: a server that heard from a live leader within the election timeout ignores
/// vote requests — real votes as well as pre-votes, from members and strangers alike, on
/// followers and on the leader itself. One forged vote request cannot force an election.
#[test]
fn a_vote_request_from_a_stranger_does_not_disturb_a_healthy_cluster() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    for to in [1, 2, 3] {
        c.node_mut(to).step(vote(77, to, term + 5, false)).unwrap();
    }
    c.stabilize();
    assert_eq!(c.leaders(), [1]);
    for id in [1, 2, 3] {
        assert_eq!(c.node(id).term(), term, "node {id} kept its term");
    }
}

/// Thesis §3.10: a vote request marked as a leader transfer bypasses stickiness only because
/// the leader asked one of its voters to campaign; from a node outside the configuration the
/// mark is a forgery and earns no exemption.
#[test]
fn a_transfer_vote_from_a_non_voter_gets_no_exemption() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    c.node_mut(2).step(vote(77, 2, term + 1, true)).unwrap();
    c.node_mut(1).step(vote(77, 1, term + 1, true)).unwrap();
    c.stabilize();
    assert_eq!(c.leaders(), [1]);
    assert_eq!(c.node(2).term(), term);
    // The same mark from a voter is honoured (leader transfer works as before).
    c.node_mut(2).step(vote(3, 2, term + 1, true)).unwrap();
    assert_eq!(c.node(2).term(), term + 1);
}

/// §5.3 assumes a follower keeps what it acknowledged. One that lost it (wiped or rolled-back
/// storage) says so in its heartbeat answer — the leader only sends it a commit index up to
/// what it acknowledged — and the leader stops counting those entries for it, reports it,
/// and sends them again. Without this, the leader counted the follower for entries it did not
/// hold and never resent them: the follower stayed empty for good.
#[test]
fn a_follower_that_lost_acknowledged_entries_is_no_longer_counted_and_is_refilled() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..5 {
        c.propose(1, &format!("x{i}"));
    }
    c.stabilize();
    c.tick_all(3); // heartbeats carry the final commit index
    let acknowledged = c.node(1).peer_progress(3).unwrap().match_index;
    assert_eq!(acknowledged, 6);
    assert_eq!(c.node(3).commit_index(), 6);

    // Node 3's storage is wiped and it restarts knowing nothing.
    c.add_empty_node(3);
    c.isolate(2); // with 2 away, only 3 could help commit
    let mut seen = Vec::new();
    for _ in 0..10 {
        c.tick_all(1);
        seen.extend(c.regressions.remove(&1).unwrap_or_default());
        let p = c.node(1).peer_progress(3).unwrap();
        assert!(
            p.match_index <= c.node(3).last_log_id().index,
            "the leader counts node 3 for entries it does not hold: match {} vs its last {}",
            p.match_index,
            c.node(3).last_log_id().index
        );
    }
    assert_eq!(
        seen,
        [PeerRegression {
            peer: 3,
            acknowledged,
            log_end: 0
        }],
        "reported exactly once"
    );
    c.heal();
    c.tick_all(5);
    assert_eq!(c.node(3).last_log_id(), c.node(1).last_log_id());
    let id = c.propose(1, "after");
    c.stabilize();
    assert!(c.node(3).commit_index() >= id.index);
    assert!(c.applied_data(3).contains(&"after".to_string()));
}

/// Node ids are never given out twice (the configuration remembers the highest id it ever
/// had): a removed node, or a stale copy of its storage, can never again count as a member.
#[test]
fn node_ids_are_never_reused() {
    use MembershipChange::{AddLearner, AddVoter, Remove};
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(1).change_membership_single(Remove(3)).unwrap();
    c.stabilize();
    assert!(!c.node(1).membership().contains(3));
    assert_eq!(c.node(1).membership().highest_id, 3);
    assert!(c.node(1).committed_membership().is_retired(3));
    for change in [AddLearner(3), AddVoter(3)] {
        let err = c.node_mut(1).change_membership(&[change]);
        assert!(
            matches!(&err, Err(MembershipError::Invalid(m)) if m.contains("never reused")),
            "{change:?}: {err:?}"
        );
    }
    c.node_mut(1)
        .change_membership_single(AddLearner(4))
        .unwrap();
    c.stabilize();
    assert_eq!(c.node(1).membership().highest_id, 4);
    assert_eq!(c.node(2).membership().highest_id, 4, "replicated");
}

/// Thesis §4.1: a configuration takes effect when appended but may still be rolled back until
/// committed, so only the committed one says a node is gone for good.
#[test]
fn only_a_committed_removal_retires_a_node() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(2);
    c.isolate(3);
    c.node_mut(1)
        .change_membership_single(MembershipChange::Remove(3))
        .unwrap();
    c.drain(1);
    let leader = c.node(1);
    assert!(!leader.membership().contains(3), "in effect once appended");
    assert!(leader.committed_membership().contains(3));
    assert!(!leader.committed_membership().is_retired(3));
    assert_eq!(leader.role(), Role::Leader);
}

/// §5.2 Election Safety: there is at most one leader per term, so an append claiming to come
/// from another leader of the leader's own term is forged or broken. The leader neither
/// follows it nor lets it touch its log (which would lose committed entries).
#[test]
fn a_leader_ignores_appends_from_a_second_leader_of_its_term() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let id = c.propose(1, "acknowledged");
    c.stabilize();
    let term = c.node(1).term();
    let before = c.node(1).last_log_id();
    c.node_mut(1)
        .step(Message {
            from: 2,
            to: 1,
            term,
            body: MessageBody::Append(AppendRequest {
                prev: id,
                entries: vec![blank(term, id.index + 1)],
                commit: id.index + 1,
            }),
        })
        .unwrap();
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).leader(), Some(1));
    assert_eq!(c.node(1).last_log_id(), before, "log untouched");
    assert_eq!(c.node(1).commit_index(), id.index);
}

/// A log reader whose `term` fails at one index, as a damaged disk would.
struct FailingReader {
    store: MemoryStore,
    fail_term_at: Option<u64>,
}

impl LogReader for FailingReader {
    fn first_index(&self) -> u64 {
        self.store.first_index()
    }
    fn last_index(&self) -> u64 {
        self.store.last_index()
    }
    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if self.fail_term_at == Some(index) {
            return Err(StorageError::Inconsistent(format!(
                "cannot read entry {index}"
            )));
        }
        self.store.term(index)
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        self.store.entries(low, high, max_bytes, out)
    }
}

/// A follower that cannot read its own log where an append's `prev` lies does not guess: it
/// rejects the append, asks the leader to probe from its commit index (which is known to
/// match, §5.4), and reports the read error to the runtime.
#[test]
fn a_failed_log_read_rejects_the_append_and_is_reported() {
    let store = MemoryStore::new();
    store
        .persist_now(&PersistRequest::new(
            None,
            vec![blank(1, 1), blank(1, 2), blank(1, 3)],
            true,
        ))
        .unwrap();
    let initial = InitialState {
        hard_state: HardState {
            term: 1,
            vote: None,
            commit: 0,
        },
        membership: Membership::new([1, 2, 3]),
        ..Default::default()
    };
    let reader = FailingReader {
        store,
        fail_term_at: None,
    };
    let mut node = Raft::new(config(2), reader, initial).unwrap();
    node.log_reader_mut().fail_term_at = Some(3);
    node.step(Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Append(AppendRequest {
            prev: EntryId::new(1, 3),
            entries: vec![],
            commit: 0,
        }),
    })
    .unwrap();
    let ready = node.ready();
    assert!(
        ready
            .storage_errors
            .iter()
            .any(|e| matches!(e, StorageError::Inconsistent(d) if d.contains("entry 3"))),
        "{:?}",
        ready.storage_errors
    );
    let answers: Vec<_> = ready.messages.iter().map(|m| m.body.clone()).collect();
    assert_eq!(
        answers,
        [MessageBody::AppendResponse(AppendResponse::Rejected {
            rejected_index: 3,
            hint: ConflictHint::LogTooShort { last_index: 0 },
        })]
    );
}

/// A leader whose log lost entries a follower still needs, with no snapshot to send instead
/// (a damaged or tampered store), reports the inconsistency and carries on: it neither
/// panics nor spins retrying the impossible send.
#[test]
fn a_leader_missing_entries_and_snapshot_reports_it_and_does_not_spin() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    for i in 0..5 {
        c.propose(1, &format!("v{i}"));
    }
    c.stabilize();
    let last = c.node(1).last_log_id().index;
    // The leader's store loses everything up to `last - 1`: no snapshot covers it.
    c.node(1).log_reader().purge_now(last - 1).unwrap();
    c.expect_storage_errors(1);
    c.heal();
    c.tick_all(30);
    let errors = &c.storage_errors[&1];
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, StorageError::Inconsistent(d) if d.contains("no snapshot"))),
        "{errors:?}"
    );
    assert_eq!(c.node(1).role(), Role::Leader);
}

/// The regression report above is acted on once per finding: an answer to a heartbeat sent
/// before the leader noticed (delayed in the network) is stale once the follower has been
/// refilled, and must not make the leader forget entries the follower now holds again.
#[test]
fn a_delayed_report_of_lost_entries_is_ignored_after_the_refill() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..5 {
        c.propose(1, &format!("x{i}"));
    }
    c.stabilize();
    c.tick_all(3);
    let acknowledged = c.node(1).peer_progress(3).unwrap().match_index;
    c.add_empty_node(3); // wiped
    // Two heartbeat rounds reach node 3; both answers say its log ends at 0. Hold them.
    let mut answers = Vec::new();
    while answers.len() < 2 {
        c.tick(1);
        c.drain(1);
        let sent: Vec<Message> = c.network.drain(..).collect();
        for m in sent {
            let to_3 = m.to == 3 && matches!(m.body, MessageBody::Heartbeat(_));
            c.deliver(m);
            if to_3 {
                c.drain(3);
                answers.extend(c.network.drain(..).filter(|m| {
                    matches!(
                        m.body,
                        MessageBody::HeartbeatResponse(HeartbeatResponse {
                            log_end: Some(0),
                            ..
                        })
                    )
                }));
            }
        }
        c.drain(2);
        c.deliver_all();
    }
    c.deliver(answers[0].clone());
    c.stabilize();
    c.tick_all(5); // the leader refills node 3
    assert_eq!(
        c.node(1).peer_progress(3).unwrap().match_index,
        acknowledged
    );
    let reports = c.regressions.remove(&1).unwrap_or_default();
    assert_eq!(reports.len(), 1, "{reports:?}");

    c.deliver(answers[1].clone()); // the delayed answer to the second round
    c.stabilize();
    assert_eq!(
        c.node(1).peer_progress(3).unwrap().match_index,
        acknowledged,
        "still counted for what it holds again"
    );
    assert_eq!(c.regressions.remove(&1).unwrap_or_default(), []);
}
