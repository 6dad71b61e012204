//! Client proposals: who accepts them (Raft paper §5.1, §8: only the leader), the ids they are
//! given (§5.3), the limits that protect the leader's memory (`max_proposal_bytes`,
//! `max_uncommitted_bytes`), batching of bursts (thesis §10.2.1), and configuration
//! validation.

use bytes::Bytes;
use dengine_core::{
    Config, ENTRY_OVERHEAD_BYTES, Entry, EntryId, InitialState, Membership, MemoryStore,
    MessageBody, ProposeError, Raft,
};

use crate::cluster::{Cluster, data, new_node, normal, persist_now};

fn bytes(n: usize) -> Bytes {
    Bytes::from(vec![b'a'; n])
}

/// §8: "clients send all of their requests to the leader"; a follower refuses a proposal
/// and names the leader it knows, so the client can redirect.
#[test]
fn propose_on_follower_is_refused_naming_the_known_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let before = c.node(2).last_log_id();
    assert_eq!(
        c.node_mut(2).propose(data("x")),
        Err(ProposeError::NotLeader {
            leader: Some(1),
            leader_address: None
        })
    );
    assert_eq!(c.node(2).last_log_id(), before, "nothing appended");
    assert!(!c.node(2).has_ready());
}

/// §8: the redirect names where the leader is reached, when the configuration records it.
#[test]
fn propose_on_follower_names_the_leaders_address() {
    use dengine_core::{InitialState, Membership, MemoryStore, Raft};
    let membership = Membership::new([1, 2])
        .with_address(1, "10.0.0.1:7000")
        .with_address(2, "10.0.0.2:7000");
    let mut nodes: Vec<_> = [1, 2]
        .map(|id| {
            let initial = InitialState {
                membership: membership.clone(),
                ..Default::default()
            };
            Raft::new(crate::cluster::config(id), MemoryStore::new(), initial).unwrap()
        })
        .into_iter()
        .collect();
    // Node 1 campaigns; node 2 votes; node 1 leads and tells node 2.
    nodes[0].campaign();
    for _ in 0..10 {
        let mut msgs = Vec::new();
        for n in nodes.iter_mut() {
            msgs.extend(crate::cluster::settle(n));
        }
        for m in msgs {
            let _ = nodes[(m.to - 1) as usize].step(m);
        }
    }
    assert_eq!(nodes[1].leader(), Some(1));
    assert_eq!(
        nodes[1].propose(data("x")),
        Err(ProposeError::NotLeader {
            leader: Some(1),
            leader_address: Some("10.0.0.1:7000".into())
        })
    );
}

/// §8: a node that knows no leader (fresh, or campaigning) refuses with no redirect.
#[test]
fn propose_without_known_leader_is_refused_with_no_redirect() {
    let mut node = new_node(1, &[1, 2, 3], &|_| {});
    assert_eq!(
        node.propose(data("x")),
        Err(ProposeError::NotLeader {
            leader: None,
            leader_address: None
        })
    );
    node.campaign();
    assert_ne!(node.role(), dengine_core::Role::Leader);
    assert_eq!(
        node.propose(data("x")),
        Err(ProposeError::NotLeader {
            leader: None,
            leader_address: None
        })
    );
    assert_eq!(node.last_log_id(), EntryId::ZERO);
}

/// §5.3: the leader appends each command at the next index in its current term, and returns
/// that (term, index) so the client can recognise it when it is applied.
#[test]
fn propose_returns_the_term_and_consecutive_indexes_it_assigned() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    let ids: Vec<EntryId> = ["a", "b", "c"].iter().map(|s| c.propose(1, s)).collect();
    // Index 1 is the leader's blank entry (§8).
    assert_eq!(
        ids,
        [
            EntryId::new(term, 2),
            EntryId::new(term, 3),
            EntryId::new(term, 4)
        ]
    );
    assert_eq!(c.node(1).last_log_id(), EntryId::new(term, 4));
    c.stabilize();
    for id in [1, 2, 3] {
        let applied: Vec<Entry> = c.applied[&id][1..].to_vec();
        assert_eq!(
            applied,
            [
                normal(term, 2, "a"),
                normal(term, 3, "b"),
                normal(term, 4, "c")
            ],
            "node {id}"
        );
    }
}

/// `max_proposal_bytes`: a larger payload is refused with its size and the limit; one of
/// exactly the limit is accepted.
#[test]
fn proposal_larger_than_max_proposal_bytes_is_refused() {
    let mut c = Cluster::with_config(3, |c| c.max_proposal_bytes = 16);
    c.elect(1);
    let before = c.node(1).last_log_id();
    assert_eq!(
        c.node_mut(1).propose(bytes(17)),
        Err(ProposeError::TooLarge { size: 17, max: 16 })
    );
    assert_eq!(c.node(1).last_log_id(), before, "nothing appended");
    assert!(!c.node(1).has_ready());
    let id = c.node_mut(1).propose(bytes(16)).unwrap();
    assert_eq!(id.index, before.index + 1);
}

/// `max_uncommitted_bytes`: with the followers unreachable nothing commits, and the leader
/// accepts proposals only while the bytes appended and not committed (payload plus the
/// per-entry overhead) stay within the limit. Once the followers are back and the entries commit, it accepts again.
#[test]
fn uncommitted_bytes_limit_refuses_proposals_until_entries_commit() {
    let mut c = Cluster::with_config(3, |c| {
        c.max_proposal_bytes = 10;
        // Entries count with their overhead: 10-byte proposals take 34 bytes each.
        c.max_uncommitted_bytes = 2 * 34 + 29;
    });
    c.elect(1);
    c.isolate(2);
    c.isolate(3);
    let leader = c.node_mut(1);
    leader.propose(bytes(10)).unwrap();
    leader.propose(bytes(10)).unwrap();
    assert_eq!(
        leader.propose(bytes(10)),
        Err(ProposeError::UncommittedLimit {
            uncommitted: 68,
            max: 97
        })
    );
    let last = leader.propose(bytes(5)).unwrap(); // exactly at the limit
    assert_eq!(
        leader.propose(bytes(1)),
        Err(ProposeError::UncommittedLimit {
            uncommitted: 97,
            max: 97
        })
    );
    c.stabilize(); // the leader writes its entries; the appends are lost
    assert_eq!(c.node(1).persisted_index(), last.index);
    assert_eq!(c.node(1).commit_index(), 1);
    assert_eq!(
        c.node_mut(1).propose(bytes(1)),
        Err(ProposeError::UncommittedLimit {
            uncommitted: 97,
            max: 97
        }),
        "the leader's own durability does not commit anything"
    );

    c.heal();
    c.tick_all(4); // heartbeats find the followers behind and repair them
    assert_eq!(c.node(1).commit_index(), last.index);
    let next = c.node_mut(1).propose(bytes(10)).unwrap();
    assert_eq!(next.index, last.index + 1);
    c.stabilize();
    assert_eq!(c.node(2).commit_index(), next.index);
    // Committed entries leave the count exactly: the whole limit is available again.
    let leader = c.node_mut(1);
    leader.propose(bytes(10)).unwrap();
    leader.propose(bytes(10)).unwrap();
    leader.propose(bytes(5)).unwrap();
}

/// The same limit with the followers reachable but their disks held: acknowledgements, not
/// deliveries, free the budget.
#[test]
fn uncommitted_bytes_are_freed_by_commitment_not_by_delivery() {
    let mut c = Cluster::with_config(3, |c| {
        c.max_proposal_bytes = 10;
        c.max_uncommitted_bytes = 2 * 34;
    });
    c.elect(1);
    c.slow_disk(2);
    c.slow_disk(3);
    c.propose(1, "0123456789");
    c.propose(1, "0123456789");
    c.stabilize();
    assert_eq!(
        c.node(2).last_log_id().index,
        3,
        "delivered to the follower"
    );
    assert_eq!(
        c.node_mut(1).propose(bytes(1)),
        Err(ProposeError::UncommittedLimit {
            uncommitted: 68,
            max: 68
        })
    );
    c.release_writes(2);
    c.stabilize();
    assert_eq!(c.node(1).commit_index(), 3);
    c.node_mut(1).propose(bytes(10)).unwrap();
    c.node_mut(1).propose(bytes(10)).unwrap();
    assert!(matches!(
        c.node_mut(1).propose(bytes(1)),
        Err(ProposeError::UncommittedLimit { .. })
    ));
}

/// `Entry::size_bytes` is documented as the measure of "every byte limit (... uncommitted
/// bytes ...)", with `ENTRY_OVERHEAD_BYTES` per entry "so that limits on bytes also bound the
/// count of tiny entries". With the followers unreachable, a stream of empty proposals must
/// therefore hit `max_uncommitted_bytes` too, after at most limit / overhead of them.
#[test]
fn uncommitted_limit_also_bounds_the_number_of_empty_proposals() {
    let mut c = Cluster::with_config(3, |c| {
        c.max_proposal_bytes = 10;
        c.max_uncommitted_bytes = 100;
    });
    c.elect(1);
    c.isolate(2);
    c.isolate(3);
    let leader = c.node_mut(1);
    let accepted = (0..1000)
        .take_while(|_| leader.propose(Bytes::new()).is_ok())
        .count() as u64;
    assert!(
        accepted <= 100 / ENTRY_OVERHEAD_BYTES,
        "{accepted} empty proposals accepted while nothing commits"
    );
}

/// Thesis §10.2.1 (batching): proposals made between two `ready()` calls cost one write and
/// one append message per follower, carrying all of them; all commit.
#[test]
fn burst_of_proposals_is_one_write_and_one_append_per_follower() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    let words = ["a", "b", "c", "d", "e"];
    for w in words {
        c.propose(1, w);
    }
    let want: Vec<Entry> = (2..).zip(words).map(|(i, w)| normal(term, i, w)).collect();

    let ready = c.node_mut(1).ready();
    let write = ready.persist.as_ref().expect("one write");
    assert_eq!(write.entries, want);
    let appends: Vec<(u64, Vec<Entry>)> = ready
        .messages
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Append(a) => Some((m.to, a.entries.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(appends, [(2, want.clone()), (3, want)]);
    assert_eq!(ready.messages.len(), 2);

    persist_now(c.node_mut(1), &ready);
    c.network.extend(ready.messages);
    c.stabilize();
    for id in [1, 2, 3] {
        assert_eq!(c.applied_data(id), words, "node {id}");
    }
}

fn problems(cfg: Config) -> (Vec<String>, String) {
    let initial = InitialState {
        membership: Membership::new([1, 2, 3]),
        ..Default::default()
    };
    let err = Raft::new(cfg, MemoryStore::new(), initial)
        .err()
        .expect("invalid config accepted");
    let fields = err.problems.iter().map(|p| p.field.clone()).collect();
    (fields, err.to_string())
}

/// Configuration errors name the offending field and its value, so an operator can fix it.
/// (A too-small election timeout also invalidates the fields bounded by it.)
#[test]
fn config_validation_errors_name_the_field() {
    type Case = (&'static [&'static str], fn(&mut Config), &'static str);
    let cases: [Case; 6] = [
        (&["id"], |c| c.id = 0, "id = 0"),
        (
            &[
                "election_timeout_ticks",
                "heartbeat_interval_ticks",
                "lease_drift_ticks",
            ],
            |c| c.election_timeout_ticks = 1,
            "election_timeout_ticks = 1",
        ),
        (
            &["heartbeat_interval_ticks"],
            |c| c.heartbeat_interval_ticks = 10,
            "heartbeat_interval_ticks = 10",
        ),
        (
            &["max_uncommitted_bytes"],
            |c| {
                c.max_proposal_bytes = 100;
                c.max_uncommitted_bytes = 99;
            },
            "max_uncommitted_bytes = 99",
        ),
        (
            &["lease_drift_ticks"],
            |c| c.lease_drift_ticks = 10,
            "lease_drift_ticks = 10",
        ),
        (
            &["max_inflight_messages"],
            |c| c.max_inflight_messages = 0,
            "max_inflight_messages = 0",
        ),
    ];
    for (want, spoil, text) in cases {
        let mut cfg = Config::new(1);
        spoil(&mut cfg);
        let (fields, message) = problems(cfg);
        assert_eq!(fields, want);
        assert!(
            message.contains(text),
            "{message:?} should mention {text:?}"
        );
    }

    // Every bad field is reported, not just the first.
    let mut cfg = Config::new(0);
    cfg.max_apply_batch_bytes = 0;
    assert_eq!(problems(cfg).0, ["id", "max_apply_batch_bytes"]);

    // The defaults are valid.
    let initial = InitialState::default();
    assert!(Raft::new(Config::new(1), MemoryStore::new(), initial).is_ok());
}
