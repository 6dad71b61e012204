//! Linearizable reads that do not write to the log: ReadIndex (thesis §6.4) and lease reads
//! (thesis §6.4.1), on the leader, forwarded from followers, and in a single-voter cluster.
//!
//! The leader serves a read at its commit index once (1) it has committed an entry of its own
//! term, (2) a heartbeat round sent after the read arrived is answered by a majority (or its
//! lease holds), and (3) its state machine has applied up to that index.

use dengine_core::{
    FailedRead, Heartbeat, Message, MessageBody, ReadError, ReadIndexRequest, ReadIndexResponse,
    ReadMode, ReadState, Role,
};

use crate::cluster::{Cluster, persist_now};

fn rs(ctx: u64, index: u64) -> ReadState {
    ReadState { ctx, index }
}

fn heartbeat(from: u64, to: u64, term: u64, commit: u64, round: u64) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::Heartbeat(Heartbeat { commit, round }),
    }
}

/// The heartbeat rounds in `msgs`, one entry per heartbeat message.
fn heartbeat_rounds(msgs: &[Message]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| match m.body {
            MessageBody::Heartbeat(hb) => Some(hb.round),
            _ => None,
        })
        .collect()
}

/// Lets `followers` answer what is queued for them and hands their answers back to the queue.
fn followers_answer(c: &mut Cluster, followers: &[u64]) {
    for &f in followers {
        c.deliver_to(f);
        c.drain(f);
    }
}

/// Thesis §6.4 step 1: until a new leader has committed an entry of its own term (its blank
/// entry, §8) it does not know the latest commit index, so it refuses reads. Here the
/// followers' disks are held, so the blank entry is replicated but not acknowledged.
#[test]
fn read_index_refused_until_leader_commits_an_entry_of_its_term() {
    let mut c = Cluster::new(3);
    c.campaign_until_leader(1);
    c.slow_disk(2);
    c.slow_disk(3);
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(1).commit_index(), 0);
    assert!(!c.node(1).committed_in_current_term());

    let node = c.node_mut(1);
    assert_eq!(
        node.read_index(1, ReadMode::ReadIndex),
        Err(ReadError::LeaderNotReady)
    );
    assert_eq!(
        node.read_index(2, ReadMode::Lease),
        Err(ReadError::LeaderNotReady)
    );
    assert!(!node.has_ready(), "a refused read queues nothing");

    c.release_writes(2);
    c.release_writes(3);
    c.stabilize();
    assert_eq!(c.node(1).commit_index(), 1);
    assert!(c.node(1).committed_in_current_term());
    c.node_mut(1).read_index(3, ReadMode::ReadIndex).unwrap();
    c.stabilize();
    assert_eq!(c.reads_of(1), [rs(3, 1)]);
    assert!(c.failed_reads_of(1).is_empty());
}

/// Thesis §6.4 step 2: the leader records its commit index as the read index and sends a fresh
/// heartbeat round in the same `Ready`; the read is released only once a majority (counting
/// the leader) has answered that round.
#[test]
fn read_index_waits_for_a_heartbeat_round_answered_by_a_majority() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!((c.node(1).term(), c.node(1).commit_index()), (1, 1));

    c.node_mut(1).read_index(7, ReadMode::ReadIndex).unwrap();
    let ready = c.node_mut(1).ready();
    assert!(
        ready.read_states.is_empty(),
        "not before the round is answered"
    );
    assert!(ready.persist.is_none(), "a read writes nothing");
    assert_eq!(
        ready.messages,
        [heartbeat(1, 2, 1, 1, 1), heartbeat(1, 3, 1, 1, 1)],
        "the leader's first heartbeat round, sent in the read's own turn"
    );

    c.network.extend(ready.messages);
    followers_answer(&mut c, &[2, 3]);
    assert!(
        !c.node(1).has_ready(),
        "answers not yet delivered: nothing to release"
    );

    // One follower plus the leader is a majority of three.
    let answers: Vec<Message> = c.network.drain(..).collect();
    assert_eq!(answers.len(), 2);
    c.deliver(answers[0].clone());
    let ready = c.node_mut(1).ready();
    assert_eq!(ready.read_states, [rs(7, 1)]);
    assert!(ready.messages.is_empty());

    // The second, late answer releases nothing more.
    c.deliver(answers[1].clone());
    assert!(c.node_mut(1).ready().read_states.is_empty());
}

/// Thesis §6.4: "a majority of the cluster"; in a five-node cluster the leader and one
/// follower are not enough.
#[test]
fn read_index_needs_answers_from_a_majority_not_one_follower() {
    let mut c = Cluster::new(5);
    c.elect(1);
    c.node_mut(1).read_index(7, ReadMode::ReadIndex).unwrap();
    c.drain(1);
    followers_answer(&mut c, &[2, 3, 4, 5]);
    let answers: Vec<Message> = c.network.drain(..).collect();
    assert_eq!(answers.len(), 4);

    c.deliver(answers[0].clone());
    c.drain(1);
    assert!(c.reads_of(1).is_empty(), "2 of 5 is no majority");
    c.deliver(answers[1].clone());
    c.drain(1);
    assert_eq!(c.reads_of(1), [rs(7, 1)], "3 of 5 is");
}

/// Thesis §6.4: leadership must be confirmed by a round sent *after* the read arrived; an
/// answer to an earlier heartbeat proves nothing about the leader's status at read time.
#[test]
fn answers_to_a_round_sent_before_the_read_do_not_confirm_it() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick(1);
    c.tick(1); // heartbeat interval: round 1 is sent
    let early = c.node_mut(1).ready();
    assert_eq!(heartbeat_rounds(&early.messages), [1, 1]);

    c.node_mut(1).read_index(7, ReadMode::ReadIndex).unwrap();
    let fresh = c.node_mut(1).ready();
    assert_eq!(heartbeat_rounds(&fresh.messages), [2, 2]);

    c.network.extend(early.messages);
    followers_answer(&mut c, &[2, 3]);
    c.deliver_all();
    c.drain(1);
    assert!(c.reads_of(1).is_empty(), "round 1 predates the read");

    c.network.extend(fresh.messages);
    followers_answer(&mut c, &[2, 3]);
    c.deliver_all();
    c.drain(1);
    assert_eq!(c.reads_of(1), [rs(7, 1)]);
}

/// Thesis §6.4 ("the leader can batch"): reads that arrive in one turn share one heartbeat
/// round, one message per follower, and are all released by its answers.
#[test]
fn reads_in_one_turn_share_one_heartbeat_round() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for ctx in [1, 2, 3] {
        c.node_mut(1).read_index(ctx, ReadMode::ReadIndex).unwrap();
    }
    let ready = c.node_mut(1).ready();
    assert_eq!(heartbeat_rounds(&ready.messages), [1, 1]);
    assert_eq!(ready.messages.len(), 2);

    c.network.extend(ready.messages);
    c.stabilize();
    assert_eq!(c.reads_of(1), [rs(1, 1), rs(2, 1), rs(3, 1)]);
}

/// Thesis §6.4 step 4: the leader serves the read only once its state machine has applied up
/// to the read index. Here the leader's read is confirmed while the committed entry it covers
/// is handed out but not yet reported applied.
#[test]
fn read_is_released_only_after_the_state_machine_applied_its_index() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let id = c.propose(1, "x");
    assert_eq!(id.index, 2);

    // Replicate and commit "x", reporting the leader's writes but not applying anything.
    let ready = c.node_mut(1).ready();
    persist_now(c.node_mut(1), &ready);
    c.network.extend(ready.messages);
    followers_answer(&mut c, &[2, 3]);
    c.deliver_all();
    assert_eq!(c.node(1).commit_index(), 2);
    assert_eq!(c.node(1).applied_index(), 1);

    c.node_mut(1).read_index(9, ReadMode::ReadIndex).unwrap();
    let ready = c.node_mut(1).ready();
    let handed: Vec<u64> = ready.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(handed, [2]);
    assert!(ready.read_states.is_empty());
    persist_now(c.node_mut(1), &ready);
    c.network.extend(ready.messages);
    followers_answer(&mut c, &[2, 3]);
    c.deliver_all(); // the round is answered: the read is confirmed at index 2

    assert!(
        !c.node(1).has_ready(),
        "confirmed, but entry 2 is not applied yet"
    );
    assert!(c.node_mut(1).ready().read_states.is_empty());

    c.node_mut(1).on_applied(2);
    let ready = c.node_mut(1).ready();
    assert_eq!(ready.read_states, [rs(9, 2)]);
    assert!(ready.messages.is_empty());
}

/// Thesis §6.4 / §6.2: a leader cut off from the cluster never gets its round answered, so
/// it never serves the read; when CheckQuorum makes it step down, the read fails.
#[test]
fn isolated_leader_never_confirms_a_read_and_fails_it_on_stepping_down() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.node_mut(1).read_index(7, ReadMode::ReadIndex).unwrap();
    c.stabilize();
    let mut ticks = 0;
    while c.node(1).role() == Role::Leader {
        assert!(ticks < 30, "CheckQuorum never deposed the isolated leader");
        assert!(
            c.reads_of(1).is_empty(),
            "tick {ticks}: read served without a quorum"
        );
        assert!(
            c.failed_reads_of(1).is_empty(),
            "tick {ticks}: failed while leading"
        );
        c.tick(1);
        c.stabilize();
        ticks += 1;
    }
    assert_eq!(c.node(1).role(), Role::Follower);
    assert!(c.reads_of(1).is_empty());
    assert_eq!(
        c.failed_reads_of(1),
        [FailedRead {
            ctx: 7,
            error: ReadError::NotLeader { leader: None }
        }]
    );
    assert_eq!(
        c.node_mut(1).read_index(8, ReadMode::ReadIndex),
        Err(ReadError::NotLeader { leader: None })
    );
}

/// Thesis §6.4: "followers can also offload the processing of read-only queries": a follower
/// asks the leader for a read index, then serves the read from its own state machine.
#[test]
fn follower_forwards_read_index_to_the_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(2).read_index(5, ReadMode::ReadIndex).unwrap();
    let ready = c.node_mut(2).ready();
    assert!(ready.read_states.is_empty());
    assert_eq!(
        ready.messages,
        [Message {
            from: 2,
            to: 1,
            term: 1,
            body: MessageBody::ReadIndexRequest(ReadIndexRequest {
                ctx: 5,
                lease: false
            }),
        }]
    );

    c.network.extend(ready.messages);
    c.deliver_to(1);
    let ready = c.node_mut(1).ready();
    assert_eq!(
        ready.messages,
        [heartbeat(1, 2, 1, 1, 1), heartbeat(1, 3, 1, 1, 1)],
        "the leader confirms the forwarded read with a heartbeat round"
    );
    c.network.extend(ready.messages);
    followers_answer(&mut c, &[2, 3]);
    c.deliver_to(1);
    let ready = c.node_mut(1).ready();
    assert!(
        ready.read_states.is_empty(),
        "the leader does not serve it itself"
    );
    assert_eq!(
        ready.messages,
        [Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::ReadIndexResponse(ReadIndexResponse {
                ctx: 5,
                index: Some(1)
            }),
        }]
    );

    c.network.extend(ready.messages);
    c.deliver_to(2);
    let ready = c.node_mut(2).ready();
    assert_eq!(ready.read_states, [rs(5, 1)]);
}

/// Thesis §6.4: the follower serves the forwarded read only once *its* state machine has
/// applied up to the read index the leader returned, which may be ahead of it.
#[test]
fn follower_releases_forwarded_read_only_after_applying_the_read_index() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "x");
    c.drain(1);
    followers_answer(&mut c, &[2, 3]);
    c.deliver_all(); // the leader commits index 2; the followers do not know yet
    assert_eq!(c.node(1).commit_index(), 2);
    assert_eq!(c.node(2).commit_index(), 1);

    c.node_mut(2).read_index(5, ReadMode::ReadIndex).unwrap();
    c.drain(2);
    c.deliver_all();
    c.drain(1);
    // Keep node 2 in the dark about the new commit index: drop what the leader sends it now,
    // and let node 3 answer the heartbeat round.
    c.network.retain(|m| m.to != 2);
    followers_answer(&mut c, &[3]);
    c.deliver_all();
    c.drain(1);
    assert_eq!(
        c.network.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        [MessageBody::ReadIndexResponse(ReadIndexResponse {
            ctx: 5,
            index: Some(2)
        })]
    );
    c.deliver_all();
    c.drain(2);
    assert_eq!(c.node(2).applied_index(), 1);
    assert!(c.reads_of(2).is_empty(), "node 2 has not applied index 2");

    // The next heartbeat tells node 2 that index 2 is committed; once applied, the read goes.
    c.tick_all(2);
    assert_eq!(c.node(2).applied_index(), 2);
    assert_eq!(c.applied_data(2), ["x"]);
    assert_eq!(c.reads_of(2), [rs(5, 2)]);
}

/// A follower that knows no leader cannot forward a read; it refuses it at once.
#[test]
fn follower_without_known_leader_refuses_read() {
    let mut c = Cluster::new(3);
    assert_eq!(c.node(2).leader(), None);
    for mode in [ReadMode::ReadIndex, ReadMode::Lease] {
        assert_eq!(
            c.node_mut(2).read_index(1, mode),
            Err(ReadError::NotLeader { leader: None })
        );
    }
    assert!(!c.node(2).has_ready(), "nothing is sent");
}

/// A leader that cannot serve a forwarded read (it has not committed an entry of its term)
/// answers `index: None`, and the follower reports the read failed rather than waiting.
#[test]
fn leader_that_cannot_serve_a_forwarded_read_answers_none_and_follower_fails_it() {
    let mut c = Cluster::new(3);
    c.campaign_until_leader(1);
    c.slow_disk(2);
    c.slow_disk(3);
    c.stabilize(); // the blank entry reaches the followers; their acks wait for their disks
    assert_eq!(c.node(2).leader(), Some(1));
    assert!(!c.node(1).committed_in_current_term());

    c.node_mut(2).read_index(5, ReadMode::ReadIndex).unwrap();
    c.drain(2);
    c.deliver_to(1);
    let ready = c.node_mut(1).ready();
    assert_eq!(
        ready.messages,
        [Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::ReadIndexResponse(ReadIndexResponse {
                ctx: 5,
                index: None
            }),
        }]
    );
    c.network.extend(ready.messages);
    c.deliver_to(2);
    c.drain(2);
    assert!(c.reads_of(2).is_empty());
    assert_eq!(
        c.failed_reads_of(2),
        [FailedRead {
            ctx: 5,
            error: ReadError::LeaderNotReady
        }]
    );
}

/// Thesis §6.4.1: once a majority acknowledged a heartbeat round, the leader's lease lasts
/// `election_timeout_ticks - lease_drift_ticks` from when that round was *sent*; within it a
/// lease read is served with no message at all, after it the read falls back to a heartbeat
/// round. A brand-new leader has no acknowledged round and starts with the fallback.
#[test]
fn lease_read_is_served_without_messages_until_the_lease_expires() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let cfg = c.node(1).config().clone();
    let lease = cfg.election_timeout_ticks - cfg.lease_drift_ticks;
    assert_eq!(lease, 8);

    // No acknowledged round yet: the first lease read needs one (sent at tick 0).
    c.node_mut(1).read_index(1, ReadMode::Lease).unwrap();
    let ready = c.node_mut(1).ready();
    assert!(ready.read_states.is_empty());
    assert_eq!(heartbeat_rounds(&ready.messages), [1, 1]);
    c.network.extend(ready.messages);
    c.stabilize();
    assert_eq!(c.reads_of(1), [rs(1, 1)]);
    assert_eq!(c.node(1).lease_reads_served(), 0, "that one needed a round");

    // From now on no heartbeat is acknowledged: followers hear the leader, answers are lost.
    c.block(2, 1);
    c.block(3, 1);
    for t in 1..lease {
        c.tick(1);
        c.stabilize();
        c.node_mut(1).read_index(10 + t, ReadMode::Lease).unwrap();
        let ready = c.node_mut(1).ready();
        assert!(
            ready.messages.is_empty(),
            "tick {t}: the lease holds, no round"
        );
        assert_eq!(ready.read_states, [rs(10 + t, 1)], "tick {t}");
        assert_eq!(c.node(1).lease_reads_served(), t);
    }
    c.tick(1);
    c.stabilize();
    c.node_mut(1).read_index(99, ReadMode::Lease).unwrap();
    let ready = c.node_mut(1).ready();
    assert!(
        ready.read_states.is_empty(),
        "tick {lease}: the lease has expired"
    );
    assert_eq!(c.node(1).lease_reads_served(), lease - 1);
    let rounds = heartbeat_rounds(&ready.messages);
    assert_eq!(rounds.len(), 2, "falls back to a heartbeat round");
    assert_eq!(rounds[0], rounds[1]);

    // ReadIndex semantics from here: the answers release it.
    c.heal();
    c.network.extend(ready.messages);
    c.stabilize();
    assert_eq!(c.reads_of(1).last(), Some(&rs(99, 1)));
    assert_eq!(c.node(1).role(), Role::Leader);
}

/// Thesis §6.4.1: a lease is only safe when followers refuse to elect another leader while they
/// hear from this one, which needs CheckQuorum; without it a lease read always falls back to a
/// ReadIndex round, even right after an acknowledged one.
#[test]
fn lease_read_without_check_quorum_falls_back_to_read_index() {
    let mut c = Cluster::with_config(3, |c| c.check_quorum = false);
    c.elect(1);
    c.node_mut(1).read_index(1, ReadMode::ReadIndex).unwrap();
    c.stabilize();
    assert_eq!(
        c.reads_of(1),
        [rs(1, 1)],
        "round 1 acknowledged by everyone"
    );

    c.node_mut(1).read_index(2, ReadMode::Lease).unwrap();
    let ready = c.node_mut(1).ready();
    assert!(ready.read_states.is_empty());
    assert_eq!(heartbeat_rounds(&ready.messages), [2, 2]);
    c.network.extend(ready.messages);
    c.stabilize();
    assert_eq!(c.reads_of(1), [rs(1, 1), rs(2, 1)]);
    assert_eq!(c.node(1).lease_reads_served(), 0);
}

/// Thesis §6.4.1 with §6.4 forwarding: a follower's lease read is answered by a leader whose
/// lease holds straight away, without a heartbeat round.
#[test]
fn forwarded_lease_read_is_answered_from_the_leaders_lease() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(1).read_index(1, ReadMode::ReadIndex).unwrap();
    c.stabilize(); // round 1 acknowledged: the lease holds

    c.node_mut(2).read_index(5, ReadMode::Lease).unwrap();
    let ready = c.node_mut(2).ready();
    assert_eq!(
        ready.messages.iter().map(|m| &m.body).collect::<Vec<_>>(),
        [&MessageBody::ReadIndexRequest(ReadIndexRequest {
            ctx: 5,
            lease: true
        })]
    );
    c.network.extend(ready.messages);
    c.deliver_to(1);
    let ready = c.node_mut(1).ready();
    assert_eq!(
        ready.messages,
        [Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::ReadIndexResponse(ReadIndexResponse {
                ctx: 5,
                index: Some(1)
            }),
        }],
        "no heartbeat round"
    );
    assert_eq!(c.node(1).lease_reads_served(), 1, "counted by the leader");
    assert_eq!(c.node(2).lease_reads_served(), 0);
    c.network.extend(ready.messages);
    c.stabilize();
    assert_eq!(c.reads_of(2), [rs(5, 1)]);
}

/// Thesis §6.4: with a single voter the leader is its own majority: once its blank entry is
/// committed, reads of either mode are served in the next `Ready` with no message.
#[test]
fn single_voter_serves_reads_immediately() {
    let mut c = Cluster::new(1);
    c.elect(1);
    assert_eq!(c.node(1).commit_index(), 1);
    c.node_mut(1).read_index(1, ReadMode::ReadIndex).unwrap();
    c.node_mut(1).read_index(2, ReadMode::Lease).unwrap();
    let ready = c.node_mut(1).ready();
    assert!(ready.messages.is_empty());
    assert!(ready.persist.is_none());
    assert_eq!(ready.read_states, [rs(1, 1), rs(2, 1)]);
}

/// `ReadError::NotLeader` names "the current leader, if known": a leader deposed by a
/// heartbeat of a newer leader fails its pending reads naming that leader, so clients can
/// retry there at once.
#[test]
fn deposed_leader_fails_pending_reads_naming_the_new_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(1).read_index(7, ReadMode::ReadIndex).unwrap();
    c.drain(1);
    c.network.clear(); // the round is lost
    c.node_mut(1).step(heartbeat(2, 1, 2, 1, 1)).unwrap();
    assert_eq!(
        (c.node(1).role(), c.node(1).leader()),
        (Role::Follower, Some(2))
    );
    c.drain(1);
    assert_eq!(
        c.failed_reads_of(1),
        [FailedRead {
            ctx: 7,
            error: ReadError::NotLeader { leader: Some(2) }
        }]
    );
}

/// Thesis §6.4.1 with §3.10: a leader transfer makes the target campaign at once (TimeoutNow
/// overrides the followers' lease), so a leader that has started a transfer no longer serves
/// lease reads from its lease; they fall back to a heartbeat round.
#[test]
fn lease_reads_stop_when_a_leader_transfer_starts() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(1).read_index(1, ReadMode::Lease).unwrap();
    c.stabilize();
    assert_eq!(
        c.reads_of(1),
        [rs(1, 1)],
        "a round acknowledged: the lease holds"
    );
    c.node_mut(1).read_index(2, ReadMode::Lease).unwrap();
    let ready = c.node_mut(1).ready();
    assert_eq!(ready.read_states, [rs(2, 1)], "served from the lease");

    c.node_mut(1).transfer_leader(2).unwrap();
    c.node_mut(1).read_index(3, ReadMode::Lease).unwrap();
    let ready = c.node_mut(1).ready();
    assert!(
        ready.read_states.is_empty(),
        "not from the lease during a transfer"
    );
}

/// Thesis §6.4.1 with §3.10: once TimeoutNow is sent, the target may win an election that
/// ignores the followers' lease at any time within the next election timeouts, even after
/// the transfer itself was abandoned; the leader serves no lease read for two election
/// timeouts after sending it.
#[test]
fn lease_reads_stay_off_for_two_election_timeouts_after_timeout_now() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let timeout = c.node(1).config().election_timeout_ticks;
    c.node_mut(1).transfer_leader(2).unwrap();
    c.drain(1);
    let before = c.network.len();
    c.network.retain(|m| m.body != MessageBody::TimeoutNow); // lost
    assert_eq!(c.network.len(), before - 1, "TimeoutNow was sent at once");
    c.stabilize();
    for t in 1..2 * timeout {
        c.tick(1);
        c.stabilize();
        c.node_mut(1).read_index(t, ReadMode::Lease).unwrap();
        let ready = c.node_mut(1).ready();
        assert!(
            ready.read_states.is_empty(),
            "tick {t}: served from the lease"
        );
        c.network.extend(ready.messages);
        c.stabilize();
    }
    assert_eq!(c.node(1).role(), Role::Leader, "the transfer was abandoned");
    assert_eq!(c.node(1).transfer_target(), None);
}
