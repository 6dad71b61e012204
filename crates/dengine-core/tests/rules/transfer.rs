//! Leadership transfer (thesis §3.10).

use dengine_core::{MessageBody, ProposeError, ReadMode, Role, TransferError};

use crate::cluster::Cluster;

/// Thesis §3.10: the leader sends TimeoutNow to an up-to-date target, which campaigns at
/// once, wins a higher term, and the old leader follows it.
#[test]
fn transfer_to_an_up_to_date_follower_makes_it_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    c.node_mut(1).transfer_leader(2).unwrap();
    c.drain(1);
    assert!(
        c.network
            .iter()
            .any(|m| m.to == 2 && m.body == MessageBody::TimeoutNow)
    );
    c.stabilize();
    assert_eq!(c.leaders(), [2]);
    assert_eq!(c.node(2).term(), term + 1);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).leader(), Some(2));
}

/// Thesis §3.10: a lagging target is first brought up to date; TimeoutNow follows only once
/// its log matches the leader's.
#[test]
fn lagging_target_is_caught_up_before_timeout_now() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    c.propose(1, "a");
    c.propose(1, "b");
    c.stabilize();
    c.heal();
    c.node_mut(1).transfer_leader(3).unwrap();
    c.drain(1);
    assert!(
        !c.network.iter().any(|m| m.body == MessageBody::TimeoutNow),
        "target is behind: no TimeoutNow yet"
    );
    c.tick_all(4); // heartbeats find it behind; appends catch it up; TimeoutNow follows
    assert_eq!(c.leaders(), [3]);
    assert_eq!(c.applied_data(3), ["a", "b"]);
}

/// Thesis §3.10: the leader stops accepting proposals during a transfer.
#[test]
fn proposals_are_refused_during_a_transfer() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(2);
    c.node_mut(1).transfer_leader(2).unwrap();
    assert_eq!(
        c.node_mut(1).propose(crate::cluster::data("x")),
        Err(ProposeError::TransferInProgress { to: 2 })
    );
}

/// Thesis §3.10: a transfer that does not complete within an election timeout is abandoned and
/// the leader carries on.
#[test]
fn transfer_is_abandoned_after_an_election_timeout() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(2);
    c.node_mut(1).transfer_leader(2).unwrap();
    for _ in 0..9 {
        c.tick(1);
    }
    assert_eq!(c.node(1).transfer_target(), Some(2));
    c.tick(1);
    assert_eq!(c.node(1).transfer_target(), None);
    assert_eq!(c.node(1).role(), Role::Leader);
    assert!(c.node_mut(1).propose(crate::cluster::data("x")).is_ok());
}

/// The target's campaign bypasses stickiness: followers that just heard from the leader
/// still vote for it (thesis §4.2.3 exception for transfers).
#[test]
fn transfer_campaign_is_not_blocked_by_stickiness() {
    let mut c = Cluster::new(5);
    c.elect(1);
    c.propose(1, "a");
    c.stabilize(); // every follower heard from the leader just now
    c.node_mut(1).transfer_leader(4).unwrap();
    c.stabilize();
    assert_eq!(c.leaders(), [4]);
}

/// Invalid transfers are refused with a reason.
#[test]
fn invalid_transfers_are_refused() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!(
        c.node_mut(2).transfer_leader(3),
        Err(TransferError::NotLeader { leader: Some(1) })
    );
    assert_eq!(
        c.node_mut(1).transfer_leader(1),
        Err(TransferError::AlreadyLeader(1))
    );
    assert_eq!(
        c.node_mut(1).transfer_leader(9),
        Err(TransferError::NotAVoter(9))
    );
}

/// Lease reads stop while leadership is being handed over: the target's election bypasses
/// the stickiness leases rely on, so the read falls back to a heartbeat round.
#[test]
fn lease_reads_fall_back_to_read_index_during_a_transfer() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(2); // a heartbeat round acknowledged: the lease holds
    c.node_mut(1).read_index(1, ReadMode::Lease).unwrap();
    c.drain(1);
    assert!(c.network.is_empty(), "served from the lease");
    c.isolate(2);
    c.node_mut(1).transfer_leader(2).unwrap();
    c.node_mut(1).read_index(2, ReadMode::Lease).unwrap();
    c.drain(1);
    assert!(
        c.network
            .iter()
            .any(|m| matches!(m.body, MessageBody::Heartbeat(_))),
        "lease suspended: a heartbeat round confirms the read"
    );
}

/// Thesis §3.10: only the node's own leader can tell it to campaign at once, and only a voter
/// campaigns. A TimeoutNow from another member (forged, or from a deposed leader) and one
/// sent to a learner change nothing.
#[test]
fn timeout_now_is_obeyed_only_from_the_leader_and_only_by_a_voter() {
    use dengine_core::{Membership, MembershipChange, Message};

    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    let timeout_now = |from, to| Message {
        from,
        to,
        term,
        body: MessageBody::TimeoutNow,
    };
    c.node_mut(2).step(timeout_now(3, 2)).unwrap();
    assert_eq!((c.node(2).role(), c.node(2).term()), (Role::Follower, term));

    c.add_empty_node(4);
    c.node_mut(1)
        .change_membership_single(MembershipChange::AddLearner(4))
        .unwrap();
    c.stabilize();
    assert_eq!(
        c.node(4).membership(),
        &Membership::new([1, 2, 3]).with_learners([4])
    );
    assert_eq!(c.node(4).leader(), Some(1));
    c.node_mut(4).step(timeout_now(1, 4)).unwrap();
    assert_eq!((c.node(4).role(), c.node(4).term()), (Role::Follower, term));
}
