//! A deliberately naive reference checker, used only to cross-check the search on small
//! histories.
//!
//! It shares no code with the search: it treats the whole history as one map of registers (so
//! it also checks that per-key partitioning is sound), keeps unknown-outcome gets, and for every
//! subset of the unknown-outcome operations enumerates every order of the chosen operations that
//! respects real time, judging each complete order only at the end. Exponential; keep histories
//! to a handful of operations.

use std::collections::BTreeMap;

use super::{History, Op, OpResult, Operation, Outcome};

/// Whether some order of all completed operations plus some subset of the unknown-outcome ones,
/// consistent with real time, is a legal sequential run of a map of registers starting absent.
pub(super) fn is_linearizable(history: &History) -> bool {
    let ops = history.operations();
    let completed: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i].outcome, Outcome::Completed { .. }))
        .collect();
    let unknown: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i].outcome, Outcome::Unknown))
        .collect();
    assert!(unknown.len() < 20, "reference checker is exponential");
    for mask in 0u32..(1 << unknown.len()) {
        let mut chosen = completed.clone();
        chosen.extend(
            unknown
                .iter()
                .enumerate()
                .filter(|(bit, _)| mask & (1 << bit) != 0)
                .map(|(_, &index)| index),
        );
        let mut placed = vec![false; ops.len()];
        let mut order = Vec::with_capacity(chosen.len());
        if some_order_is_legal(ops, &chosen, &mut placed, &mut order) {
            return true;
        }
    }
    false
}

/// Real-time order: `a` must come before `b` iff `a` completed strictly before `b` was invoked.
fn precedes(a: &Operation, b: &Operation) -> bool {
    match a.outcome {
        Outcome::Completed { at, .. } => at < b.invoke,
        Outcome::Unknown => false,
    }
}

fn some_order_is_legal(
    ops: &[Operation],
    chosen: &[usize],
    placed: &mut [bool],
    order: &mut Vec<usize>,
) -> bool {
    if order.len() == chosen.len() {
        return is_legal(ops, order);
    }
    for &next in chosen {
        if placed[next] {
            continue;
        }
        let blocked = chosen
            .iter()
            .any(|&other| other != next && !placed[other] && precedes(&ops[other], &ops[next]));
        if blocked {
            continue;
        }
        placed[next] = true;
        order.push(next);
        if some_order_is_legal(ops, chosen, placed, order) {
            return true;
        }
        order.pop();
        placed[next] = false;
    }
    false
}

fn is_legal(ops: &[Operation], order: &[usize]) -> bool {
    let mut store: BTreeMap<u64, u64> = BTreeMap::new();
    for &index in order {
        let operation = &ops[index];
        let current = store.get(&operation.key).copied();
        let observed = match operation.outcome {
            Outcome::Completed { result, .. } => Some(result),
            Outcome::Unknown => None,
        };
        match operation.op {
            Op::Put { value } => {
                store.insert(operation.key, value);
            }
            Op::Get => {
                if let Some(result) = observed
                    && result != OpResult::Get(current)
                {
                    return false;
                }
            }
            Op::Cas { expected, new } => {
                let swapped = current == expected;
                if let Some(result) = observed
                    && result != OpResult::Cas(swapped)
                {
                    return false;
                }
                if swapped {
                    store.insert(operation.key, new);
                }
            }
        }
    }
    true
}
