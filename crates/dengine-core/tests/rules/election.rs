//! Elections: Raft paper §5.2 (leader election), §5.4.1 (election restriction), thesis §9.6
//! (pre-vote), §4.2.3 (leader stickiness), §6.2 (check-quorum), §8 (blank entry).

use dengine_core::{
    EntryId, EntryPayload, HardState, Message, MessageBody, Role, VoteRequest, VoteResponse,
};

use crate::cluster::{Cluster, Node, blank, new_node, node_with_log, persist_now, settle};

fn vote_request(from: u64, to: u64, term: u64, last: EntryId, pre_vote: bool) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::VoteRequest(VoteRequest {
            pre_vote,
            last_log: last,
            leader_transfer: false,
        }),
    }
}

/// A vote answer from `from` to node 1.
fn vote_response(from: u64, term: u64, pre_vote: bool, granted: bool) -> Message {
    Message {
        from,
        to: 1,
        term,
        body: MessageBody::VoteResponse(VoteResponse { pre_vote, granted }),
    }
}

fn no_pre_vote(c: &mut dengine_core::Config) {
    c.pre_vote = false;
}

/// Ticks `node` until it leaves the follower role; returns the number of ticks.
fn ticks_until_campaign(node: &mut Node) -> u64 {
    for t in 1..=1000 {
        node.tick();
        if node.role() != Role::Follower {
            return t;
        }
    }
    panic!("never campaigned");
}

/// §5.2: "election timeouts are chosen randomly from a fixed interval"; here
/// [election_timeout, 2 * election_timeout).
#[test]
fn election_timeout_is_randomized_in_base_to_twice_base() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let mut node = new_node(1, &[1, 2, 3], &|c| c.seed = seed);
        let t = ticks_until_campaign(&mut node);
        assert!((10..20).contains(&t), "seed {seed}: timeout {t}");
        seen.insert(t);
    }
    assert!(
        seen.len() >= 8,
        "timeouts should spread over the interval: {seen:?}"
    );
}

/// The same seed gives the same timeout: the core has no randomness of its own.
#[test]
fn election_timeout_is_deterministic_per_seed() {
    let a = ticks_until_campaign(&mut new_node(1, &[1, 2, 3], &|c| c.seed = 7));
    let b = ticks_until_campaign(&mut new_node(1, &[1, 2, 3], &|c| c.seed = 7));
    assert_eq!(a, b);
}

/// §5.2: a candidate increments its term, votes for itself and sends RequestVote to every
/// other server; term and vote are handed to the runtime to persist.
#[test]
fn candidate_increments_term_votes_for_itself_and_requests_votes() {
    let mut node = new_node(1, &[1, 2, 3], &no_pre_vote);
    node.campaign();
    assert_eq!(node.role(), Role::Candidate);
    assert_eq!((node.term(), node.vote()), (1, Some(1)));
    let ready = node.ready();
    let write = ready.persist.as_ref().unwrap();
    assert_eq!(
        write.hard_state,
        Some(HardState {
            term: 1,
            vote: Some(1),
            commit: 0
        })
    );
    assert!(write.must_sync);
    let to: Vec<u64> = ready.messages.iter().map(|m| m.to).collect();
    assert_eq!(to, [2, 3]);
    for m in &ready.messages {
        assert_eq!(m.term, 1);
        assert_eq!(
            m.body,
            MessageBody::VoteRequest(VoteRequest {
                pre_vote: false,
                last_log: EntryId::ZERO,
                leader_transfer: false
            })
        );
    }
}

/// Figure 2 / classic bug 3: a candidate's own vote counts only once its term and vote are
/// durable; a single-node cluster therefore becomes leader only after the write is reported.
#[test]
fn candidate_counts_its_own_vote_only_after_persisting_it() {
    let mut node = new_node(1, &[1], &no_pre_vote);
    node.campaign();
    assert_eq!(node.role(), Role::Candidate);
    let ready = node.ready();
    assert_eq!(node.role(), Role::Candidate, "vote not yet durable");
    persist_now(&mut node, &ready);
    assert_eq!(node.role(), Role::Leader);
}

/// Figure 2 / classic bug 2: "respond to RPCs only after updating stable storage". The vote
/// grant is held inside the core until the vote is reported durable.
#[test]
fn vote_response_is_sent_only_after_the_vote_is_durable() {
    let mut node = new_node(1, &[1, 2, 3], &|_| {});
    node.step(vote_request(2, 1, 1, EntryId::ZERO, false))
        .unwrap();
    let ready = node.ready();
    assert!(ready.messages.is_empty(), "grant must wait for the write");
    let write = ready.persist.clone().unwrap();
    assert_eq!(write.hard_state.unwrap().vote, Some(2));
    assert!(!node.has_ready() || node.ready().messages.is_empty());
    node.log_reader().persist_now(&write).unwrap();
    node.on_persisted(write.done());
    let ready = node.ready();
    assert_eq!(
        ready.messages,
        vec![Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::VoteResponse(VoteResponse {
                pre_vote: false,
                granted: true
            })
        }]
    );
}

fn granted(node: &mut Node) -> Vec<(u64, bool)> {
    let ready = node.ready();
    persist_now(node, &ready);
    let mut msgs = ready.messages;
    msgs.extend(node.ready().messages);
    msgs.into_iter()
        .filter_map(|m| match m.body {
            MessageBody::VoteResponse(r) => Some((m.to, r.granted)),
            _ => None,
        })
        .collect()
}

/// §5.2: each server votes for at most one candidate per term, first come first served; a
/// retried request from the same candidate is granted again.
#[test]
fn at_most_one_vote_per_term() {
    let mut node = new_node(1, &[1, 2, 3], &|_| {});
    node.step(vote_request(2, 1, 1, EntryId::ZERO, false))
        .unwrap();
    assert_eq!(granted(&mut node), [(2, true)]);
    node.step(vote_request(3, 1, 1, EntryId::ZERO, false))
        .unwrap();
    assert_eq!(granted(&mut node), [(3, false)]);
    node.step(vote_request(2, 1, 1, EntryId::ZERO, false))
        .unwrap();
    assert_eq!(granted(&mut node), [(2, true)]);
    assert_eq!(node.vote(), Some(2));
}

/// §5.4.1: a vote is granted only to a candidate whose log is at least as up to date: higher
/// last term, or equal last term and at least as long.
#[test]
fn vote_denied_to_candidate_with_less_up_to_date_log() {
    let cases = [
        (EntryId::new(1, 9), false), // lower last term, longer log
        (EntryId::new(2, 1), false), // same term, shorter
        (EntryId::new(2, 2), true),  // same term, same length
        (EntryId::new(3, 1), true),  // higher last term
    ];
    for (i, (last, want)) in cases.into_iter().enumerate() {
        let mut node = node_with_log(1, &[1, 2, 3], &[blank(1, 1), blank(2, 2)], 2);
        let term = 5 + i as u64;
        node.step(vote_request(2, 1, term, last, false)).unwrap();
        assert_eq!(granted(&mut node), [(2, want)], "candidate last log {last}");
        assert_eq!(
            node.term(),
            term,
            "the higher term is adopted either way (§5.1)"
        );
    }
}

/// §5.1: a server that sees a higher term adopts it and becomes follower, even a leader.
#[test]
fn higher_term_turns_leader_into_follower() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let hb = Message {
        from: 2,
        to: 1,
        term: 7,
        body: MessageBody::HeartbeatResponse(dengine_core::HeartbeatResponse {
            round: 0,
            log_end: None,
        }),
    };
    c.node_mut(1).step(hb).unwrap();
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!((c.node(1).term(), c.node(1).vote()), (7, None));
}

/// §5.1: messages from an older term are stale. A stale leader's heartbeat is answered with
/// our term (so it steps down) and changes nothing here.
#[test]
fn stale_term_message_is_answered_with_the_current_term_and_ignored() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(2).campaign(); // node 2 moves to a later term
    c.drain(2);
    c.network.clear();
    let term = c.node(2).term();
    let stale = Message {
        from: 1,
        to: 2,
        term: term - 1,
        body: MessageBody::Heartbeat(dengine_core::Heartbeat {
            commit: 0,
            round: 3,
        }),
    };
    c.node_mut(2).step(stale).unwrap();
    c.drain(2);
    let out: Vec<_> = c.network.drain(..).collect();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].to, out[0].term), (1, term));
    assert_eq!(c.node(2).leader(), None, "a stale leader is not followed");
}

/// §8: a new leader appends a blank entry of its own term.
#[test]
fn new_leader_appends_a_blank_entry_of_its_term() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let leader = c.node(1);
    assert_eq!(leader.last_log_id(), EntryId::new(leader.term(), 1));
    let applied = &c.applied[&1];
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].payload, EntryPayload::Blank);
    assert_eq!(c.node(1).commit_index(), 1);
}

/// §5.2: if votes split, candidates time out and start a new election with a new term; the
/// randomized timeouts then let one of them win.
#[test]
fn split_vote_is_resolved_by_a_later_election() {
    let mut c = Cluster::with_config(4, no_pre_vote);
    // 1 and 2 campaign at once; 3 hears 1 first, 4 hears 2 first: 2 votes each out of 4.
    c.node_mut(1).campaign();
    c.node_mut(2).campaign();
    c.drain(1);
    c.drain(2);
    let mut msgs: Vec<Message> = c.network.drain(..).collect();
    msgs.sort_by_key(|m| (m.to, if m.to == 3 { m.from } else { 3 - m.from }));
    for m in msgs {
        c.deliver(m);
    }
    c.stabilize();
    assert!(c.leaders().is_empty(), "votes split: no leader in term 1");
    assert_eq!(c.node(1).term(), 1);
    assert_eq!(c.node(2).term(), 1);
    // Time passes; someone times out first and wins a later term.
    for _ in 0..100 {
        c.tick_all(1);
        if !c.leaders().is_empty() {
            break;
        }
    }
    let leaders = c.leaders();
    assert_eq!(leaders.len(), 1);
    assert!(c.node(leaders[0]).term() >= 2);
}

/// §5.2: when the leader fails, a follower times out and a new leader is elected with a
/// higher term; entries committed before are kept (§5.4).
#[test]
fn leader_failure_leads_to_reelection() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.stabilize();
    c.isolate(1);
    for _ in 0..100 {
        c.tick_all(1);
        if c.leaders().iter().any(|&l| l != 1) {
            break;
        }
    }
    let new = c.leaders().into_iter().find(|&l| l != 1).unwrap();
    assert!(c.node(new).term() > 1);
    c.propose(new, "b");
    c.stabilize();
    assert_eq!(c.applied_data(new), ["a", "b"]);
}

/// Thesis §9.6: with pre-vote, a node cut off from the cluster keeps timing out but never
/// raises its term.
#[test]
fn pre_vote_keeps_an_isolated_node_from_raising_its_term() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    for _ in 0..200 {
        c.tick(3);
        c.stabilize();
    }
    assert_eq!(c.node(3).term(), term);
    assert_eq!(c.node(3).role(), Role::PreCandidate);
}

/// Thesis §9.6: when the partitioned node rejoins, its pre-votes are refused (the others have
/// a live leader and a log at least as new), so the leader and term are undisturbed.
#[test]
fn pre_vote_rejoining_partitioned_node_does_not_disrupt_the_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    for _ in 0..50 {
        c.tick(3);
        c.stabilize();
    }
    c.heal();
    c.tick_all(30);
    assert_eq!(c.leaders(), [1]);
    assert_eq!(c.node(1).term(), term);
    assert_eq!(c.node(3).role(), Role::Follower);
    assert_eq!(c.node(3).leader(), Some(1));
}

/// The contrast that shows the previous test can fail: without pre-vote (and without
/// stickiness) the rejoining node's higher term deposes the healthy leader.
#[test]
fn without_pre_vote_a_rejoining_node_disrupts_the_leader() {
    let mut c = Cluster::with_config(3, |c| {
        c.pre_vote = false;
        c.check_quorum = false;
    });
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    for _ in 0..50 {
        c.tick(3);
        c.stabilize();
    }
    assert!(c.node(3).term() > term + 1);
    c.heal();
    c.tick_all(30);
    assert!(
        c.node(1).term() > term,
        "the leader was forced into a new term"
    );
}

/// Thesis §9.6: a pre-vote does not change the term or vote of the node that answers it.
#[test]
fn answering_a_pre_vote_changes_no_state() {
    let mut node = new_node(1, &[1, 2, 3], &|_| {});
    node.step(vote_request(2, 1, 5, EntryId::ZERO, true))
        .unwrap();
    assert_eq!((node.term(), node.vote()), (0, None));
    let ready = node.ready();
    assert!(ready.persist.is_none(), "nothing to persist");
    assert_eq!(ready.messages.len(), 1);
    let m = &ready.messages[0];
    assert_eq!(m.term, 5, "a granted pre-vote answers in the proposed term");
    assert_eq!(
        m.body,
        MessageBody::VoteResponse(VoteResponse {
            pre_vote: true,
            granted: true
        })
    );
}

/// Thesis §9.6: a pre-candidate becomes a real candidate only with a majority of pre-votes.
#[test]
fn pre_candidate_needs_a_majority_of_pre_votes() {
    let mut node = new_node(1, &[1, 2, 3, 4, 5], &|_| {});
    node.campaign();
    assert_eq!(node.role(), Role::PreCandidate);
    assert_eq!(node.term(), 0);
    node.step(vote_response(2, 1, true, true)).unwrap();
    assert_eq!(node.role(), Role::PreCandidate, "2 of 5");
    node.step(vote_response(3, 1, true, true)).unwrap();
    assert_eq!(node.role(), Role::Candidate, "3 of 5");
    assert_eq!(node.term(), 1);
}

/// Thesis §4.2.3: a follower that heard from its leader within the minimum election timeout
/// ignores a RequestVote of a higher term: no term change, no answer.
#[test]
fn leader_stickiness_follower_ignores_candidates_while_leader_is_live() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    let req = vote_request(3, 2, term + 1, EntryId::new(term + 1, 99), false);
    c.node_mut(2).step(req).unwrap();
    assert_eq!(c.node(2).term(), term);
    assert_eq!(c.node(2).vote(), Some(1));
    c.drain(2);
    assert!(c.network.is_empty());
}

/// Thesis §4.2.3: stickiness ends one election timeout after the last contact, so a cluster
/// whose leader died can elect a new one (classic bug 7).
#[test]
fn stickiness_ends_after_an_election_timeout_without_leader_contact() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    for _ in 0..10 {
        c.tick(2);
    }
    c.drain(2);
    c.network.clear();
    let req = vote_request(3, 2, term + 1, EntryId::new(term + 1, 99), false);
    c.node_mut(2).step(req).unwrap();
    assert_eq!(c.node(2).term(), term + 1);
    assert_eq!(c.node(2).vote(), Some(3));
}

/// Thesis §3.10: a campaign started by a leader transfer bypasses stickiness.
#[test]
fn leader_transfer_campaign_bypasses_stickiness() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    let mut req = vote_request(3, 2, term + 1, EntryId::new(term + 1, 99), false);
    if let MessageBody::VoteRequest(r) = &mut req.body {
        r.leader_transfer = true;
    }
    c.node_mut(2).step(req).unwrap();
    assert_eq!(c.node(2).vote(), Some(3));
}

/// Without CheckQuorum there is no stickiness (followers do not track leader liveness for
/// votes), as documented on `Config::check_quorum`.
#[test]
fn stickiness_requires_check_quorum() {
    let mut c = Cluster::with_config(3, |c| c.check_quorum = false);
    c.elect(1);
    let term = c.node(1).term();
    let req = vote_request(3, 2, term + 1, EntryId::new(term + 1, 99), false);
    c.node_mut(2).step(req).unwrap();
    assert_eq!(c.node(2).term(), term + 1);
}

/// Thesis §6.2: a leader that does not hear from a majority within an election timeout steps
/// down.
#[test]
fn check_quorum_isolated_leader_steps_down() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    let mut stepped_down_after = None;
    for t in 1..=25 {
        c.tick(1);
        c.stabilize();
        if c.node(1).role() != Role::Leader {
            stepped_down_after = Some(t);
            break;
        }
    }
    let t = stepped_down_after.expect("isolated leader kept leading");
    assert!(t <= 20, "within two election timeouts, got {t}");
    assert_eq!(c.node(1).role(), Role::Follower);
}

/// Thesis §6.2: a leader in touch with a majority keeps leading (one follower down is fine).
#[test]
fn check_quorum_leader_with_a_majority_stays_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    c.tick_all(100);
    assert_eq!(c.node(1).role(), Role::Leader);
}

/// Check-quorum and stickiness together must not block a new election once the leader is
/// gone (classic bug 7): the remaining majority elects a leader within a few timeouts.
#[test]
fn lost_leader_is_replaced_despite_pre_vote_and_stickiness() {
    let mut c = Cluster::new(5);
    c.elect(1);
    c.isolate(1);
    let mut elected = None;
    for t in 1..=100 {
        c.tick_all(1);
        if c.leaders().iter().any(|&l| l != 1) {
            elected = Some(t);
            break;
        }
    }
    let t = elected.expect("no new leader");
    assert!(t < 60, "took {t} ticks");
}

/// A learner receives the log but never campaigns (thesis §4.2.1).
#[test]
fn learner_never_campaigns() {
    let mut node = new_node(4, &[1, 2, 3], &|_| {});
    for _ in 0..100 {
        node.tick();
    }
    assert_eq!(node.role(), Role::Follower);
    assert_eq!(node.term(), 0);
}

/// A restarted node honours the lease of a leader it may have forgotten: for one election
/// timeout after a restart it refuses to help elect anyone else.
#[test]
fn restarted_node_refuses_votes_for_one_election_timeout() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.restart(2);
    let term = c.node(2).term();
    let req = vote_request(3, 2, term + 1, EntryId::new(term + 1, 99), false);
    c.node_mut(2).step(req.clone()).unwrap();
    assert_eq!(c.node(2).term(), term, "ignored right after restart");
    for _ in 0..10 {
        c.tick(2);
    }
    c.node_mut(2).step(req).unwrap();
    assert_eq!(c.node(2).vote(), Some(3));
}

/// `campaign` starts an election only on a voter that is not already leader: a leader keeps
/// its term (a new election would depose it for nothing, §5.2), and a learner never
/// campaigns (thesis §4.2.1).
#[test]
fn campaign_does_nothing_on_a_leader_or_a_learner() {
    let mut leader = new_node(1, &[1], &no_pre_vote);
    leader.campaign();
    settle(&mut leader);
    assert_eq!(
        leader.role(),
        Role::Leader,
        "a single voter wins its own vote"
    );
    let term = leader.term();
    leader.campaign();
    assert_eq!((leader.role(), leader.term()), (Role::Leader, term));

    let mut learner = new_node(4, &[1, 2, 3], &|_| {});
    learner.campaign();
    assert_eq!((learner.role(), learner.term()), (Role::Follower, 0));
    assert!(learner.ready().messages.is_empty(), "no vote requests");
}

/// Thesis §9.6: a pre-candidate counts only answers to its pre-vote. Answers to a real
/// RequestVote (left over from an earlier election, or forged) neither win nor lose its
/// pre-vote round.
#[test]
fn pre_candidate_ignores_answers_to_real_vote_requests() {
    let mut node = new_node(1, &[1, 2, 3], &|_| {});
    node.campaign();
    assert_eq!(node.role(), Role::PreCandidate);
    node.step(vote_response(2, 0, false, false)).unwrap();
    node.step(vote_response(3, 0, false, false)).unwrap();
    assert_eq!(
        node.role(),
        Role::PreCandidate,
        "real-vote rejections do not end the pre-vote round"
    );
    node.step(vote_response(2, 1, true, true)).unwrap();
    assert_eq!(
        node.role(),
        Role::Candidate,
        "the pre-vote grant still counts"
    );
}

/// Only a leader tracks its followers (§5.3 nextIndex/matchIndex are leader state): a
/// deposed leader reports no progress for anyone, and a leader none for itself.
#[test]
fn peer_progress_is_leader_state_only() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert!(c.node(1).peer_progress(2).is_some());
    assert_eq!(c.node(1).peer_progress(1), None, "not a peer of itself");
    c.node_mut(1).transfer_leader(2).unwrap();
    c.stabilize();
    assert_eq!(c.leaders(), [2]);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).peer_progress(2), None);
    assert_eq!(c.node(1).peer_progress(3), None);
}

/// §5.2 / thesis §4.2.1: only voters of the configuration elect. Grants from nodes outside it
/// (a learner, a removed member, a stranger) do not make a candidate leader.
#[test]
fn votes_from_non_voters_do_not_count() {
    let mut node = new_node(1, &[1, 2, 3], &no_pre_vote);
    node.campaign();
    assert_eq!(node.role(), Role::Candidate);
    settle(&mut node);
    for stranger in [4, 5, 6] {
        node.step(vote_response(stranger, node.term(), false, true))
            .unwrap();
    }
    assert_eq!(node.role(), Role::Candidate, "1 of 3 voters");
}
