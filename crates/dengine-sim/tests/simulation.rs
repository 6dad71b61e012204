//! The simulator's own guarantees: determinism, a clean run of the real core, and that it
//! tells a broken core from a correct one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use dengine_core::InjectedBug;
use dengine_sim::{SimConfig, run};

fn short(seed: u64) -> SimConfig {
    SimConfig {
        fault_ticks: 1500,
        ..SimConfig::new(seed)
    }
}

#[test]
fn same_seed_same_trace_hash() {
    let a = run(&short(11)).unwrap();
    let b = run(&short(11)).unwrap();
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.stats, b.stats);
    let c = run(&short(12)).unwrap();
    assert_ne!(
        a.trace_hash, c.trace_hash,
        "different seeds, different runs"
    );
}

#[test]
fn verbose_trace_replays_the_same_run() {
    let quiet = run(&short(5)).unwrap();
    let loud = run(&SimConfig {
        verbose: true,
        ..short(5)
    })
    .unwrap();
    assert_eq!(quiet.trace_hash, loud.trace_hash);
    assert!(loud.trace.iter().any(|l| l.contains("leads term")));
    assert!(loud.trace.iter().any(|l| l.contains("deliver")));
}

#[test]
fn correct_core_passes_seeds_with_every_fault_kind() {
    let mut totals = (0, 0, 0, 0, 0);
    for seed in 0..6 {
        let r = run(&short(seed)).unwrap_or_else(|f| panic!("{f}"));
        totals.0 += r.stats.crashes;
        totals.1 += r.stats.partitions;
        totals.2 += r.stats.pauses;
        totals.3 += r.stats.dropped;
        totals.4 += r.stats.ops_checked;
    }
    let (crashes, partitions, pauses, dropped, ops) = totals;
    assert!(
        crashes > 0 && partitions > 0 && pauses > 0 && dropped > 0,
        "{totals:?}"
    );
    assert!(ops > 1000, "workload too small: {ops}");
}

#[test]
fn every_cluster_size_from_3_to_7_runs_clean() {
    for nodes in 3..=7 {
        let cfg = SimConfig {
            nodes,
            fault_ticks: 800,
            ..SimConfig::new(100 + nodes)
        };
        run(&cfg).unwrap_or_else(|f| panic!("{nodes} nodes: {f}"));
    }
}

#[test]
fn bad_settings_are_refused_with_the_setting_named() {
    let f = run(&SimConfig {
        nodes: 9,
        ..SimConfig::new(1)
    })
    .unwrap_err();
    assert!(f.message.contains("nodes = 9"), "{}", f.message);
}

/// Each classic bug, switched on in the core, fails the simulator at a seed where the correct
/// core passes. The seeds are the first failing ones found by
/// `cargo xtask sim --inject-bug NAME --expect-failure` (recorded in docs/correctness.md).
fn caught(bug: InjectedBug, nodes: u64, seed: u64, expect: &str) {
    let cfg = SimConfig {
        nodes,
        ..SimConfig::new(seed)
    };
    run(&cfg).unwrap_or_else(|f| panic!("the correct core fails seed {seed}: {f}"));
    let broken = SimConfig {
        bugs: vec![bug],
        ..cfg
    };
    let failure = run(&broken).expect_err("the bug went unnoticed");
    assert!(
        failure.message.contains(expect),
        "{bug:?}: unexpected failure: {}",
        failure.message
    );
    assert!(failure.replay.contains(bug.name()), "{}", failure.replay);
}

#[test]
fn catches_read_index_before_first_commit() {
    caught(
        InjectedBug::ReadIndexBeforeFirstCommit,
        5,
        10,
        "linearizability",
    );
}

#[test]
fn catches_truncating_matching_entries() {
    // Since leaders notice followers that lost acknowledged entries (and refill them), the
    // truncation shows as a node reading past the end of its own log rather than as a
    // missing committed entry on a later leader.
    caught(
        InjectedBug::TruncateMatchingSuffix,
        5,
        9,
        "is not available",
    );
}

#[test]
fn catches_ack_before_persist() {
    caught(InjectedBug::AckBeforePersist, 5, 45, "leader completeness");
}

#[test]
fn catches_vote_before_persist() {
    caught(InjectedBug::VoteBeforePersist, 3, 10, "election safety");
}

#[test]
fn catches_leader_counting_unpersisted_entries() {
    caught(
        InjectedBug::LeaderCountsUnpersisted,
        3,
        62,
        "leader completeness",
    );
}

#[test]
fn catches_membership_change_before_first_commit_of_term() {
    caught(
        InjectedBug::SingleChangeBeforeCommit,
        5,
        2527,
        "leader completeness",
    );
}

#[test]
fn catches_joint_quorum_counting_only_the_incoming_majority() {
    caught(
        InjectedBug::JointQuorumIncomingOnly,
        5,
        86,
        "leader completeness",
    );
}

#[test]
fn catches_figure_8_commit_of_an_old_term_entry() {
    caught(InjectedBug::Figure8Commit, 5, 1074, "state machine safety");
}
