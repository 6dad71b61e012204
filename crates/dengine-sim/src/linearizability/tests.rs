#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers

fn put(value: u64) -> Op {
    Op::Put { value }
}

fn cas(expected: Option<u64>, new: u64) -> Op {
    Op::Cas { expected, new }
}

/// Records a completed operation.
fn done(
    history: &mut History,
    client: u64,
    key: u64,
    op: Op,
    span: (u64, u64),
    result: OpResult,
) -> OpId {
    let id = history.invoke(client, key, op, span.0);
    history.complete(id, span.1, result).unwrap();
    id
}

/// Records an operation whose outcome its client never learned.
fn timed_out(history: &mut History, client: u64, key: u64, op: Op, invoke: u64) -> OpId {
    let id = history.invoke(client, key, op, invoke);
    history.unknown(id).unwrap();
    id
}

fn assert_linearizable(history: &History) {
    let verdict = check(history);
    assert_eq!(verdict, Verdict::Linearizable, "{verdict}");
}

fn assert_violation(history: &History, key: u64) -> Violation {
    match check(history) {
        Verdict::NotLinearizable(violation) => {
            assert_eq!(violation.key, key, "{violation}");
            violation
        }
        other => panic!("expected a violation on key {key}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Linearizable histories

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&History::new());
}

#[test]
fn sequential_operations() {
    let mut h = History::new();
    done(&mut h, 1, 1, Op::Get, (0, 1), OpResult::Get(None));
    done(&mut h, 1, 1, put(1), (2, 3), OpResult::Put);
    done(&mut h, 2, 1, Op::Get, (4, 5), OpResult::Get(Some(1)));
    done(&mut h, 1, 1, cas(Some(1), 2), (6, 7), OpResult::Cas(true));
    done(&mut h, 2, 1, cas(Some(1), 3), (8, 9), OpResult::Cas(false));
    done(&mut h, 3, 1, cas(None, 3), (10, 11), OpResult::Cas(false));
    done(&mut h, 3, 1, Op::Get, (12, 13), OpResult::Get(Some(2)));
    done(&mut h, 3, 2, cas(None, 9), (14, 15), OpResult::Cas(true));
    done(&mut h, 1, 2, Op::Get, (16, 17), OpResult::Get(Some(9)));
    assert_linearizable(&h);
}

#[test]
fn overlapping_get_sees_old_or_new_value() {
    for seen in [Some(1), Some(2)] {
        let mut h = History::new();
        done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
        done(&mut h, 1, 1, put(2), (2, 6), OpResult::Put);
        done(&mut h, 2, 1, Op::Get, (3, 4), OpResult::Get(seen));
        assert_linearizable(&h);
    }
}

#[test]
fn overlapping_gets_may_see_new_value_before_old_one_if_they_overlap() {
    // The two gets overlap each other and the put, so the one that returns first may still be
    // ordered after the one that returns later.
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    done(&mut h, 1, 1, put(2), (2, 10), OpResult::Put);
    done(&mut h, 2, 1, Op::Get, (3, 6), OpResult::Get(Some(2)));
    done(&mut h, 3, 1, Op::Get, (4, 7), OpResult::Get(Some(1)));
    assert_linearizable(&h);
}

#[test]
fn concurrent_cas_exactly_one_succeeds() {
    for first_wins in [true, false] {
        let mut h = History::new();
        done(&mut h, 1, 1, put(0), (0, 1), OpResult::Put);
        done(
            &mut h,
            1,
            1,
            cas(Some(0), 1),
            (2, 5),
            OpResult::Cas(first_wins),
        );
        done(
            &mut h,
            2,
            1,
            cas(Some(0), 2),
            (3, 6),
            OpResult::Cas(!first_wins),
        );
        let winner = if first_wins { 1 } else { 2 };
        done(&mut h, 3, 1, Op::Get, (7, 8), OpResult::Get(Some(winner)));
        assert_linearizable(&h);
    }
}

#[test]
fn unknown_put_whose_effect_is_observed_later() {
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    timed_out(&mut h, 1, 1, put(2), 2);
    done(&mut h, 2, 1, Op::Get, (10, 11), OpResult::Get(Some(1)));
    done(&mut h, 2, 1, Op::Get, (20, 21), OpResult::Get(Some(2)));
    done(&mut h, 3, 1, Op::Get, (30, 31), OpResult::Get(Some(2)));
    assert_linearizable(&h);
}

#[test]
fn unknown_put_never_observed() {
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    timed_out(&mut h, 1, 1, put(2), 2);
    done(&mut h, 2, 1, Op::Get, (10, 11), OpResult::Get(Some(1)));
    done(&mut h, 2, 1, Op::Get, (20, 21), OpResult::Get(Some(1)));
    assert_linearizable(&h);
}

#[test]
fn unknown_cas_whose_effect_is_observed_later() {
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    timed_out(&mut h, 1, 1, cas(Some(1), 5), 2);
    done(&mut h, 2, 1, Op::Get, (10, 11), OpResult::Get(Some(5)));
    assert_linearizable(&h);
}

#[test]
fn unknown_writes_placed_on_both_sides_of_a_completed_put() {
    // One timed-out put must take effect before the failed CAS (the key cannot be absent then)
    // and the other after the put of 2 (to be read at 6): the search must not let the
    // configuration that used the "wrong" unknown put first rule out the right one.
    let mut h = History::new();
    timed_out(&mut h, 1, 1, put(1), 0);
    timed_out(&mut h, 2, 1, put(0), 0);
    done(&mut h, 3, 1, cas(None, 0), (0, 0), OpResult::Cas(false));
    done(&mut h, 3, 1, put(2), (1, 1), OpResult::Put);
    done(&mut h, 4, 1, Op::Get, (6, 6), OpResult::Get(Some(1)));
    assert_linearizable(&h);
}

#[test]
fn chain_of_unknown_writes_explains_a_read() {
    // Only the timed-out put of 5 followed by the timed-out CAS 5 -> 6 explains reading 6.
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    timed_out(&mut h, 2, 1, put(5), 2);
    timed_out(&mut h, 3, 1, cas(Some(5), 6), 2);
    done(&mut h, 1, 1, Op::Get, (10, 11), OpResult::Get(Some(6)));
    assert_linearizable(&h);
}

#[test]
fn unknown_write_of_a_value_nobody_reads_explains_a_failed_cas() {
    // The CAS expecting 1 failed with nothing completed in between: only the timed-out put of
    // 2, whose value no one ever reads, can have changed the key.
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    timed_out(&mut h, 2, 1, put(2), 2);
    done(&mut h, 1, 1, cas(Some(1), 3), (3, 4), OpResult::Cas(false));
    done(&mut h, 1, 1, put(4), (5, 6), OpResult::Put);
    done(&mut h, 3, 1, Op::Get, (7, 8), OpResult::Get(Some(4)));
    assert_linearizable(&h);

    // Without the timed-out put the failure is a violation.
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    done(&mut h, 1, 1, cas(Some(1), 3), (3, 4), OpResult::Cas(false));
    assert_violation(&h, 1);
}

#[test]
fn pending_operation_is_treated_as_unknown() {
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    h.invoke(1, 1, put(2), 2); // never resolved: the run ended first
    done(&mut h, 2, 1, Op::Get, (10, 11), OpResult::Get(Some(2)));
    assert_linearizable(&h);
}

#[test]
fn unknown_get_constrains_nothing() {
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    timed_out(&mut h, 2, 1, Op::Get, 2);
    done(&mut h, 1, 1, Op::Get, (3, 4), OpResult::Get(Some(1)));
    assert_linearizable(&h);
}

#[test]
fn operations_touching_in_time_overlap() {
    // The put completes at 5 and the get is invoked at 5: they overlap, so the get may go first.
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 5), OpResult::Put);
    done(&mut h, 2, 1, Op::Get, (5, 6), OpResult::Get(None));
    assert_linearizable(&h);

    // One tick later the put strictly precedes the get.
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 5), OpResult::Put);
    done(&mut h, 2, 1, Op::Get, (6, 7), OpResult::Get(None));
    assert_violation(&h, 1);
}

#[test]
fn operations_may_be_recorded_out_of_time_order() {
    let mut h = History::new();
    let get = h.invoke(2, 1, Op::Get, 10);
    let write = h.invoke(1, 1, put(4), 0);
    h.complete(get, 11, OpResult::Get(Some(4))).unwrap();
    h.complete(write, 1, OpResult::Put).unwrap();
    assert_linearizable(&h);
}

// ---------------------------------------------------------------------------------------------
// Non-linearizable histories

#[test]
fn stale_read() {
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    done(&mut h, 1, 1, put(2), (2, 3), OpResult::Put);
    done(&mut h, 2, 1, Op::Get, (4, 5), OpResult::Get(Some(1)));
    assert_violation(&h, 1);
}

#[test]
fn lost_write() {
    // The put of 2 is acknowledged, yet every later read still sees 1.
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    done(&mut h, 2, 1, put(2), (2, 4), OpResult::Put);
    done(&mut h, 3, 1, Op::Get, (3, 5), OpResult::Get(Some(1)));
    done(&mut h, 3, 1, Op::Get, (6, 7), OpResult::Get(Some(1)));
    done(&mut h, 1, 1, Op::Get, (8, 9), OpResult::Get(Some(1)));
    assert_violation(&h, 1);
}

#[test]
fn concurrent_cas_with_same_expected_value_both_succeed() {
    let mut h = History::new();
    done(&mut h, 1, 1, put(0), (0, 1), OpResult::Put);
    done(&mut h, 1, 1, cas(Some(0), 1), (2, 5), OpResult::Cas(true));
    done(&mut h, 2, 1, cas(Some(0), 2), (3, 6), OpResult::Cas(true));
    assert_violation(&h, 1);
}

#[test]
fn cas_failed_although_expected_value_was_there() {
    let mut h = History::new();
    done(&mut h, 1, 1, put(5), (0, 1), OpResult::Put);
    done(&mut h, 2, 1, cas(Some(5), 6), (2, 3), OpResult::Cas(false));
    assert_violation(&h, 1);

    // On an absent key too.
    let mut h = History::new();
    done(&mut h, 2, 1, cas(None, 6), (2, 3), OpResult::Cas(false));
    assert_violation(&h, 1);
}

#[test]
fn read_of_a_value_never_written() {
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 4), OpResult::Put);
    done(&mut h, 2, 1, Op::Get, (1, 3), OpResult::Get(Some(7)));
    assert_violation(&h, 1);
}

#[test]
fn read_value_reverts() {
    // The put of 2 is still in flight, so reading 2 is fine, but once read, 1 cannot come back.
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    done(&mut h, 1, 1, put(2), (2, 20), OpResult::Put);
    done(&mut h, 2, 1, Op::Get, (3, 4), OpResult::Get(Some(2)));
    done(&mut h, 2, 1, Op::Get, (5, 6), OpResult::Get(Some(1)));
    assert_violation(&h, 1);
}

#[test]
fn unknown_put_cannot_explain_a_read_before_its_invocation() {
    let mut h = History::new();
    done(&mut h, 2, 1, Op::Get, (0, 1), OpResult::Get(Some(5)));
    timed_out(&mut h, 1, 1, put(5), 2);
    assert_violation(&h, 1);
}

#[test]
fn unknown_put_cannot_be_observed_then_undone() {
    let mut h = History::new();
    done(&mut h, 1, 1, put(1), (0, 1), OpResult::Put);
    timed_out(&mut h, 1, 1, put(2), 2);
    done(&mut h, 2, 1, Op::Get, (10, 11), OpResult::Get(Some(2)));
    done(&mut h, 2, 1, Op::Get, (12, 13), OpResult::Get(Some(1)));
    assert_violation(&h, 1);
}

// ---------------------------------------------------------------------------------------------
// Partitioning, reporting, budget, validation

#[test]
fn violation_is_reported_on_its_own_key() {
    let mut h = History::new();
    // Key 1: concurrent but fine.
    done(&mut h, 1, 1, put(1), (0, 3), OpResult::Put);
    done(&mut h, 2, 1, Op::Get, (1, 2), OpResult::Get(None));
    done(&mut h, 3, 1, Op::Get, (4, 5), OpResult::Get(Some(1)));
    // Key 2: a stale read, interleaved in time with key 1's operations.
    done(&mut h, 2, 2, put(10), (0, 1), OpResult::Put);
    done(&mut h, 1, 2, put(20), (4, 5), OpResult::Put);
    done(&mut h, 3, 2, Op::Get, (6, 7), OpResult::Get(Some(10)));
    // Key 3: fine.
    done(&mut h, 1, 3, cas(None, 1), (6, 7), OpResult::Cas(true));

    let violation = assert_violation(&h, 2);
    assert_eq!(violation.operations.len(), 3);
    assert!(violation.operations.iter().all(|(_, op)| op.key == 2));
}

#[test]
fn violation_explains_itself() {
    let mut h = History::new();
    let first = done(&mut h, 1, 4, put(1), (0, 1), OpResult::Put);
    let second = done(&mut h, 1, 4, put(2), (2, 3), OpResult::Put);
    let stale = done(&mut h, 2, 4, Op::Get, (4, 5), OpResult::Get(Some(1)));
    timed_out(&mut h, 3, 4, Op::Get, 6);

    let violation = assert_violation(&h, 4);
    assert_eq!(violation.longest_prefix, vec![first, second]);
    assert_eq!(violation.value_after_prefix, Some(2));
    assert_eq!(violation.next_candidates, vec![stale]);
    assert_eq!(violation.operations.len(), 4);

    let text = violation.to_string();
    for needle in [
        "key 4 is not linearizable",
        "#0 client 1 put(1) [0, 1] -> ok",
        "#2 client 2 get [4, 5] -> 1",
        "#3 client 3 get [6, ?] -> unknown  (ignored",
        "Longest linearizable prefix found (2 operations)",
        "2. #1 put(2) -> ok; register now 2",
        "#2 client 2 get [4, 5] -> 1: cannot take effect: the register holds 2",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert_eq!(check(&h).to_string(), text);
}

#[test]
fn budget_turns_a_hard_key_into_inconclusive() {
    let mut h = History::new();
    // Eight fully concurrent puts on key 1 leave many possible orders.
    for client in 0..8 {
        done(&mut h, client, 1, put(client), (0, 100), OpResult::Put);
    }
    done(&mut h, 0, 1, Op::Get, (101, 102), OpResult::Get(Some(3)));
    let tight = CheckOptions {
        max_states_per_key: 4,
    };
    assert_eq!(check_with(&h, &tight), Verdict::Inconclusive { key: 1 });
    assert_linearizable(&h);

    // A proven violation elsewhere outranks an inconclusive key.
    done(&mut h, 0, 2, Op::Get, (0, 1), OpResult::Get(Some(3)));
    let verdict = check_with(&h, &tight);
    assert_eq!(verdict.violation().map(|violation| violation.key), Some(2));
}

#[test]
fn malformed_completions_are_rejected() {
    let mut h = History::new();
    let get = h.invoke(1, 1, Op::Get, 5);
    assert_eq!(
        h.complete(get, 6, OpResult::Cas(true)),
        Err(HistoryError::ResultMismatch {
            id: get,
            op: Op::Get,
            result: OpResult::Cas(true),
        })
    );
    assert_eq!(
        h.complete(get, 4, OpResult::Get(None)),
        Err(HistoryError::CompletedBeforeInvoked {
            id: get,
            invoke: 5,
            completed: 4,
        })
    );
    // Rejections leave the operation pending.
    assert_eq!(h.get(get).map(|op| op.outcome), Some(Outcome::Unknown));
    h.complete(get, 5, OpResult::Get(None)).unwrap();
    assert_eq!(
        h.complete(get, 7, OpResult::Get(None)),
        Err(HistoryError::AlreadyResolved { id: get })
    );
    assert_eq!(
        h.unknown(get),
        Err(HistoryError::AlreadyResolved { id: get })
    );

    let put_op = h.invoke(1, 1, put(3), 8);
    assert!(matches!(
        h.complete(put_op, 9, OpResult::Get(Some(3))),
        Err(HistoryError::ResultMismatch { .. })
    ));
    let cas_op = h.invoke(1, 1, cas(None, 3), 8);
    assert!(matches!(
        h.complete(cas_op, 9, OpResult::Put),
        Err(HistoryError::ResultMismatch { .. })
    ));

    let mut other = History::new();
    other.invoke(1, 1, Op::Get, 0);
    let foreign = other.invoke(1, 1, Op::Get, 0);
    let mut small = History::new();
    small.invoke(1, 1, Op::Get, 0);
    assert_eq!(
        small.unknown(foreign),
        Err(HistoryError::NoSuchOperation { id: foreign })
    );

    let bad = Operation {
        client: 1,
        key: 1,
        op: put(1),
        invoke: 0,
        outcome: Outcome::Completed {
            at: 1,
            result: OpResult::Cas(false),
        },
    };
    assert!(matches!(
        small.push(bad),
        Err(HistoryError::ResultMismatch { .. })
    ));
    assert_eq!(small.len(), 1);
    let good = Operation {
        outcome: Outcome::Completed {
            at: 1,
            result: OpResult::Put,
        },
        ..bad
    };
    assert_eq!(small.push(good).map(OpId::index), Ok(1));
    assert!(!small.is_empty());
    assert!(
        HistoryError::ResultMismatch {
            id: get,
            op: Op::Get,
            result: OpResult::Put
        }
        .to_string()
        .contains("cannot complete with result ok")
    );
}

// ---------------------------------------------------------------------------------------------
// Long histories

/// SplitMix64, so the long histories are the same on every run without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// A linearizable history like the simulator records: each client issues one operation at a
/// time, results come from executing the operations at random points within their intervals,
/// and about `unknown_per_mille` / 1000 of them time out (having taken effect or not).
fn long_history(ops: usize, clients: u64, keys: u64, unknown_per_mille: u64, seed: u64) -> History {
    struct Planned {
        client: u64,
        key: u64,
        op: Op,
        invoke: u64,
        complete: u64,
        point: u64,
        unknown: bool,
        applied: bool,
    }
    let mut rng = Rng(seed);
    let mut free_at = vec![0u64; clients as usize];
    let mut last_written: Vec<Option<u64>> = vec![None; keys as usize];
    let mut fresh = 0u64;
    let mut planned = Vec::with_capacity(ops);
    for index in 0..ops {
        let client = index as u64 % clients;
        let invoke = free_at[client as usize] + rng.below(3);
        let complete = invoke + 1 + rng.below(8);
        free_at[client as usize] = complete + 1;
        let key = rng.below(keys);
        fresh += 1;
        let op = match rng.below(10) {
            0..=3 => put(fresh),
            4..=7 => Op::Get,
            _ => {
                let expected = match rng.below(4) {
                    0 => None,
                    1 => Some(rng.below(fresh)),
                    _ => last_written[key as usize],
                };
                cas(expected, fresh)
            }
        };
        if let Op::Put { value } | Op::Cas { new: value, .. } = op {
            last_written[key as usize] = Some(value);
        }
        let unknown = rng.below(1000) < unknown_per_mille;
        planned.push(Planned {
            client,
            key,
            op,
            invoke,
            complete,
            point: invoke * 16 + rng.below((complete - invoke) * 16 + 1),
            unknown,
            applied: !unknown || rng.below(2) == 0,
        });
    }

    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&index| (planned[index].point, index));
    let mut store: BTreeMap<u64, u64> = BTreeMap::new();
    let mut results = vec![None; planned.len()];
    for index in order {
        let p = &planned[index];
        if !p.applied {
            continue;
        }
        let current = store.get(&p.key).copied();
        results[index] = Some(match p.op {
            Op::Put { value } => {
                store.insert(p.key, value);
                OpResult::Put
            }
            Op::Get => OpResult::Get(current),
            Op::Cas { expected, new } => {
                if current == expected {
                    store.insert(p.key, new);
                }
                OpResult::Cas(current == expected)
            }
        });
    }

    let mut history = History::new();
    for (p, result) in planned.iter().zip(results) {
        let id = history.invoke(p.client, p.key, p.op, p.invoke);
        match result {
            Some(result) if !p.unknown => history.complete(id, p.complete, result).unwrap(),
            _ => history.unknown(id).unwrap(),
        }
    }
    history
}

/// Replaces the result of the completed get nearest the middle with a value never written.
fn corrupt_middle_get(history: &History) -> (History, u64) {
    let middle = history.len() / 2;
    let target = (middle..history.len())
        .find(|&index| {
            let op = &history.operations()[index];
            op.op == Op::Get && matches!(op.outcome, Outcome::Completed { .. })
        })
        .unwrap();
    let mut corrupted = History::new();
    for (index, op) in history.operations().iter().enumerate() {
        let mut op = *op;
        if index == target
            && let Outcome::Completed { at, .. } = op.outcome
        {
            op.outcome = Outcome::Completed {
                at,
                result: OpResult::Get(Some(u64::MAX)),
            };
        }
        corrupted.push(op).unwrap();
    }
    (corrupted, history.operations()[target].key)
}

#[test]
fn long_history_is_checked() {
    let history = long_history(5_000, 5, 10, 0, 1);
    assert_eq!(history.len(), 5_000);
    assert_linearizable(&history);

    let (corrupted, key) = corrupt_middle_get(&history);
    assert_violation(&corrupted, key);
}

#[test]
fn long_history_with_timeouts_is_checked() {
    let history = long_history(5_000, 5, 10, 20, 2);
    let unknown = history
        .operations()
        .iter()
        .filter(|op| op.outcome == Outcome::Unknown)
        .count();
    assert!(unknown > 50, "only {unknown} timed-out operations");
    assert_linearizable(&history);

    let (corrupted, key) = corrupt_middle_get(&history);
    assert_violation(&corrupted, key);
}

#[test]
fn long_hot_key_history_with_timeouts_is_checked() {
    let history = long_history(3_000, 5, 1, 20, 3);
    assert_linearizable(&history);
    let (corrupted, key) = corrupt_middle_get(&history);
    assert_violation(&corrupted, key);
}

#[test]
fn many_pending_unknown_writes_do_not_blow_up_the_search() {
    // Forty timed-out puts stay candidates for the whole history; without pruning of
    // configurations that only add unknown-outcome operations this is a 2^40 search.
    let build = |stale: bool| {
        let mut h = History::new();
        for client in 0..40 {
            timed_out(&mut h, 100 + client, 7, put(1_000 + client), client);
        }
        let mut t = 50;
        for round in 0..100 {
            done(&mut h, 1, 7, put(round), (t, t + 1), OpResult::Put);
            done(
                &mut h,
                2,
                7,
                Op::Get,
                (t + 2, t + 3),
                OpResult::Get(Some(round)),
            );
            done(
                &mut h,
                3,
                7,
                cas(Some(500), 600),
                (t + 4, t + 5),
                OpResult::Cas(false),
            );
            t += 6;
        }
        let last = if stale { 98 } else { 99 };
        done(&mut h, 2, 7, Op::Get, (t, t + 1), OpResult::Get(Some(last)));
        h
    };
    assert_linearizable(&build(false));
    assert_violation(&build(true), 7);
}

#[test]
fn search_work_stays_linear_on_a_sequential_history() {
    let history = long_history(2_000, 1, 1, 0, 4);
    let ops: Vec<KeyOp> = history.operations().iter().filter_map(key_op).collect();
    let search = wgl::search(&ops, usize::MAX);
    assert_eq!(search.outcome, wgl::Outcome::Linearizable);
    assert_eq!(search.states, ops.len());
}

// ---------------------------------------------------------------------------------------------
// Cross-check against the brute-force reference

/// One generated operation, before its result is known.
#[derive(Clone, Debug)]
struct RawOp {
    client: u64,
    key: u64,
    op: Op,
    invoke: u64,
    duration: u64,
    /// Where in its interval the operation takes effect, in percent.
    point: u64,
    /// 0: times out without effect, 1 or 2: times out after taking effect, else completes.
    fate: u8,
    /// Below 2: the observed result is replaced by `bogus`.
    perturb: u8,
    bogus: u64,
}

fn raw_op() -> impl Strategy<Value = RawOp> {
    (
        (0..3u64, 0..2u64, 0..3u8, 0..3u64, 0..4u64),
        (0..10u64, 0..6u64, 0..=100u64),
        (0..10u8, 0..10u8, 0..4u64),
    )
        .prop_map(
            |(
                (client, key, kind, value, expected),
                (invoke, duration, point),
                (fate, perturb, bogus),
            )| {
                let op = match kind {
                    0 => put(value),
                    1 => Op::Get,
                    _ => cas((expected < 3).then_some(expected), value),
                };
                RawOp {
                    client,
                    key,
                    op,
                    invoke,
                    duration,
                    point,
                    fate,
                    perturb,
                    bogus,
                }
            },
        )
}

/// Small histories whose results come from really executing the operations at points within
/// their intervals, with some results then perturbed: a mix of linearizable and not.
fn small_history() -> impl Strategy<Value = History> {
    (1..=3u64, 1..=2u64, prop::collection::vec(raw_op(), 0..=7)).prop_map(
        |(clients, keys, mut raw)| {
            for op in &mut raw {
                op.client %= clients;
                op.key %= keys;
            }
            let mut order: Vec<usize> = (0..raw.len()).collect();
            order.sort_by_key(|&i| (raw[i].invoke * 100 + raw[i].duration * raw[i].point, i));
            let mut store: BTreeMap<u64, u64> = BTreeMap::new();
            let mut results = vec![None; raw.len()];
            for i in order {
                let op = &raw[i];
                if op.fate == 0 {
                    continue;
                }
                let current = store.get(&op.key).copied();
                results[i] = Some(match op.op {
                    Op::Put { value } => {
                        store.insert(op.key, value);
                        OpResult::Put
                    }
                    Op::Get => OpResult::Get(current),
                    Op::Cas { expected, new } => {
                        if current == expected {
                            store.insert(op.key, new);
                        }
                        OpResult::Cas(current == expected)
                    }
                });
            }
            let mut history = History::new();
            for (op, result) in raw.iter().zip(results) {
                let outcome = match result {
                    Some(result) if op.fate >= 3 => {
                        let result = match (result, op.perturb < 2) {
                            (OpResult::Get(_), true) => {
                                OpResult::Get((op.bogus < 3).then_some(op.bogus))
                            }
                            (OpResult::Cas(swapped), true) => OpResult::Cas(!swapped),
                            (result, _) => result,
                        };
                        Outcome::Completed {
                            at: op.invoke + op.duration,
                            result,
                        }
                    }
                    _ => Outcome::Unknown,
                };
                history
                    .push(Operation {
                        client: op.client,
                        key: op.key,
                        op: op.op,
                        invoke: op.invoke,
                        outcome,
                    })
                    .unwrap();
            }
            history
        },
    )
}

fn only_key(history: &History, key: u64) -> History {
    let mut restricted = History::new();
    for op in history.operations().iter().filter(|op| op.key == key) {
        restricted.push(*op).unwrap();
    }
    restricted
}

/// Checks that a reported prefix is a legal sequential run respecting real-time order.
fn assert_prefix_is_legal(history: &History, violation: &Violation) {
    let ops = history.operations();
    let mut value = None;
    for (position, id) in violation.longest_prefix.iter().enumerate() {
        let op = &ops[id.index()];
        assert_eq!(op.key, violation.key);
        value = effect(value, op.op, completed_result(op)).expect("prefix step is illegal");
        for later in &violation.longest_prefix[position + 1..] {
            if let Outcome::Completed { at, .. } = ops[later.index()].outcome {
                assert!(at >= op.invoke, "prefix violates real-time order");
            }
        }
    }
    assert_eq!(value, violation.value_after_prefix);
}

const CROSS_CHECK_CASES: u32 = 3_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CROSS_CHECK_CASES))]

    #[test]
    fn wgl_agrees_with_brute_force(history in small_history()) {
        let verdict = check(&history);
        let expected = reference::is_linearizable(&history);
        prop_assert!(!matches!(verdict, Verdict::Inconclusive { .. }), "{}", verdict);
        prop_assert_eq!(verdict.is_linearizable(), expected, "{}", verdict);
        if let Verdict::NotLinearizable(violation) = &verdict {
            let keys: BTreeSet<u64> = history.operations().iter().map(|op| op.key).collect();
            let first_bad = keys
                .into_iter()
                .find(|&key| !reference::is_linearizable(&only_key(&history, key)));
            prop_assert_eq!(Some(violation.key), first_bad);
            assert_prefix_is_legal(&history, violation);
        }
    }
}

#[test]
fn generator_mixes_linearizable_and_violating_histories() {
    let mut runner = TestRunner::deterministic();
    let strategy = small_history();
    let (mut good, mut bad, mut with_unknown) = (0, 0, 0);
    for _ in 0..500 {
        let history = strategy.new_tree(&mut runner).unwrap().current();
        if reference::is_linearizable(&history) {
            good += 1;
        } else {
            bad += 1;
        }
        if history
            .operations()
            .iter()
            .any(|op| op.outcome == Outcome::Unknown && op.op != Op::Get)
        {
            with_unknown += 1;
        }
    }
    assert!(good >= 150 && bad >= 100, "{good} linearizable, {bad} not");
    assert!(with_unknown >= 100, "{with_unknown} with unknown writes");
}

/// Single-key histories with unconstrained random results and many unknown outcomes: mostly not
/// linearizable, but they reach search configurations the executed histories rarely do.
fn random_result_history() -> impl Strategy<Value = History> {
    let op = (
        (0..3u8, 0..3u64, 0..4u64),
        (0..6u64, 0..5u64),
        (0..10u8, 0..3u64),
    );
    prop::collection::vec(op, 1..=7).prop_map(|raw| {
        let mut history = History::new();
        for (client, ((kind, value, expected), (invoke, duration), (fate, seen))) in
            (0u64..).zip(raw)
        {
            let op = match kind {
                0 => put(value),
                1 => Op::Get,
                _ => cas((expected < 3).then_some(expected), value),
            };
            let outcome = if fate < 4 {
                Outcome::Unknown
            } else {
                let result = match op {
                    Op::Put { .. } => OpResult::Put,
                    Op::Get => OpResult::Get((seen < 2).then_some(seen)),
                    Op::Cas { .. } => OpResult::Cas(seen == 0),
                };
                Outcome::Completed {
                    at: invoke + duration,
                    result,
                }
            };
            history
                .push(Operation {
                    client,
                    key: 0,
                    op,
                    invoke,
                    outcome,
                })
                .unwrap();
        }
        history
    })
}

proptest! {
    // A deeper soak than CI needs (minutes): `cargo test -p dengine-sim --lib -- --ignored`.
    // Some pruning mistakes only show up about once in 60,000 of these histories.
    #![proptest_config(ProptestConfig::with_cases(300_000))]

    #[test]
    #[ignore = "slow soak; run on demand after changing the search"]
    fn wgl_agrees_with_brute_force_on_random_results(history in random_result_history()) {
        prop_assert_eq!(check(&history).is_linearizable(), reference::is_linearizable(&history));
    }
}
