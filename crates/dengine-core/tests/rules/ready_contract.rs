//! The I/O-ordering contract between the core and its runtime (`dengine_core::Ready` docs):
//! what a `Ready` may contain before and after `on_persisted` / `on_applied`, how
//! acknowledgements behave (cumulative, idempotent), when a write must be synced, how
//! misaddressed input is refused, and how soft state is reported. Raft paper Figure 2
//! ("respond to RPCs only after updating stable storage"), thesis §10.2.1 (the leader writes
//! its log in parallel with replication).

use dengine_core::{
    AppendRequest, AppendResponse, Entry, EntryId, HardState, Heartbeat, HeartbeatResponse,
    Message, MessageBody, Role, SoftState, StepError,
};

use crate::cluster::{Cluster, Node, blank, data, new_node, normal, persist_now};

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

fn accepted(from: u64, to: u64, term: u64, last: EntryId) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::AppendResponse(AppendResponse::Accepted { last }),
    }
}

/// A fresh follower (node 2 of three) that has stored the term-1 entries `entries` from
/// leader 1 durably, with commit index `commit`.
fn follower_with(entries: Vec<Entry>, commit: u64) -> Node {
    let mut node = new_node(2, &[1, 2, 3], &|_| {});
    node.step(append(1, 2, 1, EntryId::ZERO, entries, commit))
        .unwrap();
    while node.has_ready() {
        let ready = node.ready();
        persist_now(&mut node, &ready);
        for e in &ready.committed_entries {
            node.on_applied(e.index);
        }
    }
    node
}

/// Thesis §10.2.1: the leader sends new entries to its followers in the same `Ready` that asks
/// for its own write of them: replication runs in parallel with the leader's fsync.
#[test]
fn leader_sends_appends_in_the_same_ready_as_its_own_write() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let id = c.propose(1, "x");
    assert_eq!(id, EntryId::new(1, 2));
    let ready = c.node_mut(1).ready();
    let write = ready.persist.as_ref().expect("the leader's write");
    assert_eq!(write.entries, [normal(1, 2, "x")]);
    assert_eq!(write.hard_state, None);
    assert!(write.must_sync);
    let prev = EntryId::new(1, 1);
    assert_eq!(
        ready.messages,
        [
            append(1, 2, 1, prev, vec![normal(1, 2, "x")], 1),
            append(1, 3, 1, prev, vec![normal(1, 2, "x")], 1),
        ]
    );
    assert_eq!(c.node(1).persisted_index(), 1, "not durable yet");
}

/// Figure 2: a follower answers an append only once the entries are durable. The answer is held
/// inside the core (not in `Ready.messages`) until `on_persisted`, then comes out in the next
/// `Ready`.
#[test]
fn follower_acknowledges_new_entries_only_after_on_persisted() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "x");
    c.drain(1);
    c.deliver_to(2);

    let ready = c.node_mut(2).ready();
    let write = ready.persist.clone().expect("the follower's write");
    assert_eq!(write.entries, [normal(1, 2, "x")]);
    assert!(write.must_sync);
    assert!(ready.messages.is_empty(), "the ack must wait for the write");
    assert!(
        !c.node(2).has_ready(),
        "and is not handed out by a later Ready either"
    );

    let node = c.node_mut(2);
    node.log_reader().persist_now(&write).unwrap();
    node.on_persisted(write.done());
    assert!(node.has_ready());
    let ready = node.ready();
    assert!(ready.persist.is_none());
    assert_eq!(ready.messages, [accepted(2, 1, 1, EntryId::new(1, 2))]);
}

/// Thesis §10.2.1 and the `Ready` contract: an entry committed by a majority of followers is
/// still not handed out for applying until the leader's own write of it is durable (a crash
/// must never leave the state machine ahead of the log).
#[test]
fn committed_entries_wait_for_the_local_write() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "x");
    let ready = c.node_mut(1).ready();
    let write = ready.persist.clone().unwrap();
    c.network.extend(ready.messages);
    c.deliver_to(2);
    c.deliver_to(3);
    c.drain(2);
    c.drain(3);
    c.deliver_all();
    assert_eq!(c.node(1).commit_index(), 2, "the followers are a majority");
    assert_eq!(c.node(1).persisted_index(), 1);

    let ready = c.node_mut(1).ready();
    assert!(
        ready.committed_entries.is_empty(),
        "entry 2 is not durable here"
    );

    let node = c.node_mut(1);
    node.log_reader().persist_now(&write).unwrap();
    node.on_persisted(write.done());
    let ready = node.ready();
    assert_eq!(ready.committed_entries, [normal(1, 2, "x")]);
    assert!(
        !node.has_ready(),
        "handed out once, even before on_applied is called"
    );
}

/// `Ready.committed_entries`: in log order, each entry exactly once, whether or not the
/// runtime has reported it applied yet; `max_apply_batch_bytes` splits the batches. A
/// follower that learns entries and their commitment in one message applies none of them
/// before they are durable.
#[test]
fn committed_entries_are_handed_out_in_order_exactly_once() {
    let mut node = new_node(2, &[1, 2, 3], &|c| c.max_apply_batch_bytes = 1);
    let entries = vec![blank(1, 1), normal(1, 2, "a"), normal(1, 3, "b")];
    node.step(append(1, 2, 1, EntryId::ZERO, entries.clone(), 3))
        .unwrap();
    let ready = node.ready();
    assert_eq!(ready.persist.as_ref().unwrap().entries, entries);
    assert!(ready.committed_entries.is_empty(), "not durable yet");
    assert_eq!(node.commit_index(), 3);
    persist_now(&mut node, &ready);

    let mut batches = Vec::new();
    while node.has_ready() {
        let ready = node.ready();
        // Deliberately not reporting anything applied.
        batches.push(ready.committed_entries);
    }
    batches.retain(|b| !b.is_empty());
    assert_eq!(
        batches,
        [
            vec![blank(1, 1)],
            vec![normal(1, 2, "a")],
            vec![normal(1, 3, "b")]
        ],
        "one entry per batch (limit 1 byte), in order, once each"
    );
    node.on_applied(3);
    assert_eq!(node.applied_index(), 3);
    assert!(!node.has_ready());
}

/// `on_persisted` acknowledgements are idempotent: repeating one, or acknowledging an older
/// write after a newer one, changes nothing and releases nothing twice.
#[test]
fn duplicate_or_stale_persist_acknowledgement_is_a_no_op() {
    let mut node = new_node(2, &[1, 2, 3], &|_| {});
    node.step(append(1, 2, 1, EntryId::ZERO, vec![blank(1, 1)], 0))
        .unwrap();
    let first = node.ready().persist.unwrap();
    node.log_reader().persist_now(&first).unwrap();
    node.on_persisted(first.done());
    node.on_persisted(first.done()); // duplicate
    let ready = node.ready();
    assert_eq!(ready.messages, [accepted(2, 1, 1, EntryId::new(1, 1))]);
    node.on_persisted(first.done()); // duplicate after the release
    assert!(!node.has_ready(), "nothing released twice");
    assert_eq!(node.persisted_index(), 1);

    // A stale acknowledgement does not stand in for a newer write.
    node.step(append(
        1,
        2,
        1,
        EntryId::new(1, 1),
        vec![normal(1, 2, "x")],
        0,
    ))
    .unwrap();
    let second = node.ready().persist.unwrap();
    node.on_persisted(first.done());
    assert_eq!(node.persisted_index(), 1);
    assert!(!node.has_ready(), "the second ack still waits");
    node.log_reader().persist_now(&second).unwrap();
    node.on_persisted(second.done());
    let ready = node.ready();
    assert_eq!(ready.messages, [accepted(2, 1, 1, EntryId::new(1, 2))]);
    assert_eq!(node.persisted_index(), 2);
}

/// Writes are acknowledged in order and cumulatively (`Persisted` docs): with two writes in
/// flight (pipelined), acknowledging the second covers the first, releasing both held
/// answers; the late first acknowledgement is then a no-op.
#[test]
fn persist_acknowledgements_are_cumulative() {
    let mut node = new_node(2, &[1, 2, 3], &|_| {});
    node.step(append(1, 2, 1, EntryId::ZERO, vec![blank(1, 1)], 0))
        .unwrap();
    let first = node.ready();
    node.step(append(
        1,
        2,
        1,
        EntryId::new(1, 1),
        vec![normal(1, 2, "x")],
        0,
    ))
    .unwrap();
    let second = node.ready();
    assert!(first.messages.is_empty() && second.messages.is_empty());
    let (w1, w2) = (first.persist.unwrap(), second.persist.unwrap());
    assert_eq!(w1.entries, [blank(1, 1)]);
    assert_eq!(w2.entries, [normal(1, 2, "x")]);

    // The runtime makes both durable (in order) and reports only the second.
    node.log_reader().persist_now(&w1).unwrap();
    node.log_reader().persist_now(&w2).unwrap();
    node.on_persisted(w2.done());
    assert_eq!(node.persisted_index(), 2);
    let ready = node.ready();
    assert_eq!(
        ready.messages,
        [
            accepted(2, 1, 1, EntryId::new(1, 1)),
            accepted(2, 1, 1, EntryId::new(1, 2))
        ]
    );
    node.on_persisted(w1.done());
    assert!(!node.has_ready());
    assert_eq!(node.persisted_index(), 2);

    // The same holds for a leader: two pipelined writes, one acknowledgement.
    let mut c = Cluster::new(1);
    c.elect(1);
    let leader = c.node_mut(1);
    leader.propose(data("a")).unwrap();
    let r1 = leader.ready();
    leader.propose(data("b")).unwrap();
    let r2 = leader.ready();
    let (w1, w2) = (r1.persist.unwrap(), r2.persist.unwrap());
    leader.log_reader().persist_now(&w1).unwrap();
    leader.log_reader().persist_now(&w2).unwrap();
    leader.on_persisted(w2.done());
    assert_eq!(leader.persisted_index(), 3);
    assert_eq!(
        leader.commit_index(),
        3,
        "a single voter commits what it holds"
    );
}

/// `StepError`: a message addressed to another node, or claiming to come from this one, is a
/// routing bug; it is refused and has no effect (here it carries a higher term that would
/// otherwise depose the leader, §5.1).
#[test]
fn misaddressed_messages_are_refused_and_change_nothing() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let node = c.node_mut(1);
    let before = (node.hard_state(), node.soft_state(), node.last_log_id());
    let hb = |from, to| Message {
        from,
        to,
        term: 9,
        body: MessageBody::HeartbeatResponse(HeartbeatResponse {
            round: 0,
            log_end: None,
        }),
    };
    assert_eq!(
        node.step(hb(2, 3)),
        Err(StepError::WrongRecipient { to: 3, me: 1 })
    );
    assert_eq!(node.step(hb(1, 1)), Err(StepError::FromSelf { me: 1 }));
    assert_eq!(
        (node.hard_state(), node.soft_state(), node.last_log_id()),
        before
    );
    assert_eq!(node.role(), Role::Leader);
    assert!(!node.has_ready());

    // The contrast: the same message correctly addressed does depose it.
    node.step(hb(2, 1)).unwrap();
    assert_eq!((node.role(), node.term()), (Role::Follower, 9));
}

/// `PersistRequest::must_sync`: a write that only advances the commit index may be written
/// lazily (losing it is safe); the answer that follows it is not held back.
#[test]
fn write_that_only_advances_commit_need_not_be_synced() {
    let mut node = follower_with(vec![blank(1, 1), normal(1, 2, "x")], 0);
    assert_eq!(node.hard_state().commit, 0);
    node.step(Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Heartbeat(Heartbeat {
            commit: 2,
            round: 4,
        }),
    })
    .unwrap();
    let ready = node.ready();
    let write = ready.persist.as_ref().expect("the new commit index");
    assert_eq!(
        write.hard_state,
        Some(HardState {
            term: 1,
            vote: None,
            commit: 2
        })
    );
    assert!(write.entries.is_empty());
    assert!(!write.must_sync);
    assert_eq!(
        ready.messages,
        [Message {
            from: 2,
            to: 1,
            term: 1,
            body: MessageBody::HeartbeatResponse(HeartbeatResponse {
                round: 4,
                log_end: None
            }),
        }]
    );

    // The leader's commit-only write is lazy too.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "x");
    let ready = c.node_mut(1).ready();
    persist_now(c.node_mut(1), &ready);
    c.network.extend(ready.messages);
    c.deliver_to(2);
    c.drain(2);
    c.deliver_to(1);
    assert_eq!(c.node(1).commit_index(), 2);
    let ready = c.node_mut(1).ready();
    let write = ready.persist.as_ref().unwrap();
    assert_eq!(write.hard_state.map(|h| h.commit), Some(2));
    assert!(write.entries.is_empty());
    assert!(!write.must_sync);
}

/// Figure 2: a new term, a vote, or new entries must be on stable storage before the node
/// answers, so such writes must be synced.
#[test]
fn write_with_new_term_vote_or_entries_must_be_synced() {
    // New term and vote: a candidate (no pre-vote).
    let mut node = new_node(1, &[1, 2, 3], &|c| c.pre_vote = false);
    node.campaign();
    let write = node.ready().persist.unwrap();
    assert_eq!(
        write.hard_state,
        Some(HardState {
            term: 1,
            vote: Some(1),
            commit: 0
        })
    );
    assert!(write.entries.is_empty());
    assert!(write.must_sync);

    // New term only: a follower hearing from a leader of a later term.
    let mut node = new_node(2, &[1, 2, 3], &|_| {});
    node.step(Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::Heartbeat(Heartbeat {
            commit: 0,
            round: 1,
        }),
    })
    .unwrap();
    let ready = node.ready();
    let write = ready.persist.as_ref().unwrap();
    assert_eq!(write.hard_state.map(|h| h.term), Some(3));
    assert!(write.must_sync);
    assert!(
        ready.messages.is_empty(),
        "answer held until the term is durable"
    );

    // Entries only: a leader's proposal.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "x");
    let write = c.node_mut(1).ready().persist.unwrap();
    assert_eq!(write.hard_state, None);
    assert_eq!(write.entries, [normal(1, 2, "x")]);
    assert!(write.must_sync);
}

/// `Ready.soft_state` reports a change of role, term or leader once, in the first `Ready`
/// after it, with the state at that moment; later readies carry none until the next change.
#[test]
fn soft_state_is_reported_once_per_change() {
    let mut node = new_node(1, &[1], &|_| {});
    assert!(!node.has_ready(), "a fresh follower has nothing to report");
    node.campaign(); // pre-vote wins at once; the real candidacy waits for its write
    let ready = node.ready();
    assert_eq!(
        ready.soft_state,
        Some(SoftState {
            role: Role::Candidate,
            term: 1,
            leader: None
        })
    );
    persist_now(&mut node, &ready);
    let ready = node.ready();
    assert_eq!(
        ready.soft_state,
        Some(SoftState {
            role: Role::Leader,
            term: 1,
            leader: Some(1)
        })
    );
    persist_now(&mut node, &ready);
    let ready = node.ready();
    assert_eq!(ready.soft_state, None);
    assert_eq!(ready.committed_entries, [blank(1, 1)]);
    persist_now(&mut node, &ready);
    assert!(!node.has_ready());

    // A follower learns term and leader from one heartbeat: one report; the next heartbeat
    // of the same leader changes nothing.
    let mut node = new_node(2, &[1, 2, 3], &|_| {});
    let hb = Message {
        from: 1,
        to: 2,
        term: 4,
        body: MessageBody::Heartbeat(Heartbeat {
            commit: 0,
            round: 1,
        }),
    };
    node.step(hb.clone()).unwrap();
    let ready = node.ready();
    assert_eq!(
        ready.soft_state,
        Some(SoftState {
            role: Role::Follower,
            term: 4,
            leader: Some(1)
        })
    );
    persist_now(&mut node, &ready);
    let _ = node.ready(); // the held heartbeat answer
    node.step(hb).unwrap();
    assert_eq!(node.ready().soft_state, None);
}

/// Acknowledgements are cumulative even when the write acknowledged carries no entries: a
/// leader whose entry write and the following commit-only write complete together, and
/// which is told only of the later one, must count the entry durable and apply it.
#[test]
fn acknowledging_a_commit_only_write_covers_an_earlier_entry_write() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "x");
    let first = c.node_mut(1).ready();
    let w1 = first.persist.clone().unwrap();
    c.network.extend(first.messages);
    for f in [2, 3] {
        c.deliver_to(f);
        c.drain(f);
    }
    c.deliver_to(1);
    assert_eq!(c.node(1).commit_index(), 2, "the followers are a majority");
    let second = c.node_mut(1).ready();
    let w2 = second.persist.clone().unwrap();
    assert!(w2.entries.is_empty() && !w2.must_sync, "commit-only");
    assert!(second.committed_entries.is_empty());

    let node = c.node_mut(1);
    node.log_reader().persist_now(&w1).unwrap();
    node.log_reader().persist_now(&w2).unwrap();
    node.on_persisted(w2.done()); // covers w1 too
    assert_eq!(node.persisted_index(), 2, "entry 2 is durable");
    let ready = node.ready();
    assert_eq!(ready.committed_entries, [normal(1, 2, "x")]);
}

/// `PersistRequest::merge` (a runtime that pipelines its writes folds the writes handed out
/// while one is on the disk into one write): the merged write leaves the log exactly as the
/// two writes one after the other would, including a follower's overwritten suffix (§5.3),
/// and its single acknowledgement releases what both writes held back (Figure 2: respond only
/// after updating stable storage).
#[test]
fn merged_writes_persist_both_and_one_acknowledgement_covers_both() {
    let mut node = new_node(2, &[1, 2, 3], &|_| {});
    let first_entries = vec![blank(1, 1), normal(1, 2, "a"), normal(1, 3, "b")];
    node.step(append(1, 2, 1, EntryId::ZERO, first_entries, 0))
        .unwrap();
    let mut merged = node.ready().persist.expect("the first write");
    assert!(
        node.ready().messages.is_empty(),
        "the ack waits for the write"
    );

    // A new leader (node 3, term 2) overwrites entry 3 and appends entry 4 while the first
    // write has not started: the core hands out a second write.
    let second_entries = vec![normal(2, 3, "c"), normal(2, 4, "d")];
    node.step(append(3, 2, 2, EntryId::new(1, 2), second_entries, 0))
        .unwrap();
    let second = node.ready().persist.expect("the second write");
    assert!(second.hard_state.is_some(), "the new term is saved");
    merged.merge(second);
    assert_eq!(
        merged.entries,
        [
            blank(1, 1),
            normal(1, 2, "a"),
            normal(2, 3, "c"),
            normal(2, 4, "d")
        ],
        "entry 3 of term 1 was overwritten by the later write"
    );
    assert_eq!(merged.hard_state.map(|h| h.term), Some(2));
    assert!(merged.must_sync);

    node.log_reader().persist_now(&merged).unwrap();
    node.on_persisted(merged.done());
    assert_eq!(node.persisted_index(), 4);
    let ready = node.ready();
    assert!(ready.persist.is_none(), "nothing left to write");
    assert!(
        ready
            .messages
            .contains(&accepted(2, 3, 2, EntryId::new(2, 4))),
        "one acknowledgement released the answer that waited for both writes: {:?}",
        ready.messages
    );
}

/// `PersistRequest::merge` keeps the earlier write's entries when the later write only changes
/// the hard state (a vote), and the later hard state wins.
#[test]
fn merging_a_hard_state_only_write_keeps_the_entries() {
    let mut node = new_node(2, &[1, 2, 3], &|_| {});
    node.step(append(1, 2, 1, EntryId::ZERO, vec![blank(1, 1)], 0))
        .unwrap();
    let mut merged = node.ready().persist.expect("the first write");
    // A higher-term vote request the node grants: a write with a new hard state only.
    node.step(Message {
        from: 3,
        to: 2,
        term: 5,
        body: MessageBody::VoteRequest(dengine_core::VoteRequest {
            pre_vote: false,
            last_log: EntryId::new(1, 1),
            // Asked for by the leader, so the node's recent contact with leader 1 does not
            // make it ignore the request (thesis §4.2.3).
            leader_transfer: true,
        }),
    })
    .unwrap();
    let vote = node.ready().persist.expect("the vote write");
    assert!(vote.entries.is_empty());
    merged.merge(vote);
    assert_eq!(merged.entries, [blank(1, 1)]);
    assert_eq!(
        merged.hard_state.map(|h| (h.term, h.vote)),
        Some((5, Some(3)))
    );
    node.log_reader().persist_now(&merged).unwrap();
    node.on_persisted(merged.done());
    let ready = node.ready();
    assert!(
        ready
            .messages
            .iter()
            .any(|m| m.to == 3 && matches!(m.body, MessageBody::VoteResponse(ref r) if r.granted)),
        "the vote is granted once the merged write is durable: {:?}",
        ready.messages
    );
}

/// The `has_ready` contract for a role change alone: a leader that steps down by
/// CheckQuorum (thesis §6.2) on a tick that sends nothing still has a `Ready`, carrying the
/// new soft state, so the runtime learns at once that it no longer leads.
#[test]
fn a_step_down_alone_is_ready() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    for _ in 0..100 {
        c.tick(1);
        if c.node(1).role() != Role::Leader {
            break;
        }
        c.drain(1);
    }
    assert_eq!(c.node(1).role(), Role::Follower);
    assert!(c.node(1).has_ready(), "the step-down is news");
    let ready = c.node_mut(1).ready();
    assert_eq!(ready.soft_state.map(|s| s.role), Some(Role::Follower));
}
