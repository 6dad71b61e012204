//! The Wing–Gong search with Lowe-style memoization over one key's operations.
//!
//! The operations' call and return events sit in one doubly-linked list in time order. An
//! operation may be linearized next iff its call comes before the first return still in the
//! list: every operation that precedes it in real time has then been linearized (and removed).
//! Linearizing an operation unlinks its call and return in O(1) and pushes a frame; backtracking
//! pops the frame and relinks them in reverse order ("dancing links"), resuming the scan just
//! after the operation that was undone.
//!
//! Beyond Lowe's memo of visited configurations, the search skips steps that cannot matter
//! because of operations with unknown outcome (see the comments at each rule). Why skipping
//! keeps the search complete: suppose a linearization exists but the search fails. Among the
//! configurations it expanded that still have a valid completion, take one with the shortest
//! completion, and of those the shallowest. Each rule drops a step only when an equally short or
//! shorter completion exists that starts with a step the search does take from that
//! configuration, or from its parent, whose completion is no longer. Either way a
//! configuration earlier in that order was expanded, so no such configuration exists. The
//! brute-force cross-check in the tests exercises every rule.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use super::model::{KeyOp, Op, OpResult, effect};

/// How the search over one key ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A linearization exists.
    Linearizable,
    /// None exists. `prefix` is the longest partial linearization reached (indices into the
    /// searched operations, in order) and `value` the register value after it.
    NotLinearizable {
        prefix: Vec<usize>,
        value: Option<u64>,
    },
    /// More configurations than the budget allowed were recorded.
    BudgetExhausted,
}

/// The result of [`search`], with how much work it took.
#[derive(Debug)]
pub(super) struct Search {
    pub(super) outcome: Outcome,
    /// Configurations recorded in the memo; the tests bound the search's work with it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) states: usize,
}

/// Searches for a linearization of `ops` (sorted or not) starting from an absent register,
/// recording at most `max_states` configurations.
pub(super) fn search(ops: &[KeyOp], max_states: usize) -> Search {
    let mut list = EventList::new(ops);

    // Completed and unknown-outcome operations are numbered separately, so each set has its own
    // bitset and hash: the dominance test looks up configurations by completed set alone.
    let mut slots = Vec::with_capacity(ops.len());
    let (mut completed_total, mut unknown_total) = (0usize, 0usize);
    for op in ops {
        if op.completed.is_some() {
            slots.push(Slot::Completed(completed_total));
            completed_total += 1;
        } else {
            slots.push(Slot::Unknown(unknown_total));
            unknown_total += 1;
        }
    }

    // Unknown-outcome puts of values that no operation on the key ever reads or expects are
    // interchangeable: no operation can tell their values apart, and none has a return that
    // orders it. Swapping two in a linearization keeps it valid, so each configuration tries
    // only one of them.
    let observable: HashSet<Option<u64>> = ops
        .iter()
        .filter_map(|op| match (op.op, op.result()) {
            (Op::Get, Some(OpResult::Get(read))) => Some(read),
            (Op::Cas { expected, .. }, _) => Some(expected),
            _ => None,
        })
        .collect();
    let blind: Vec<bool> = ops
        .iter()
        .map(|op| {
            op.completed.is_none()
                && matches!(op.op, Op::Put { value } if !observable.contains(&Some(value)))
        })
        .collect();

    let mut completed_bits = vec![0u64; completed_total.div_ceil(64)];
    let mut unknown_bits = vec![0u64; unknown_total.div_ceil(64)];
    let mut memo = Memo::new(completed_bits.len(), unknown_bits.len());
    // Zobrist hashes of the two sets, kept current in O(1) per step instead of rehashing.
    let mut completed_hash = 0u64;
    let mut unknown_hash = 0u64;
    let (mut completed_done, mut unknown_done) = (0usize, 0usize);
    let mut value: Option<u64> = None;
    let mut stack: Vec<Frame> = Vec::new();

    // The longest stack seen. `agreed` is how much of the bottom of the stack has been left
    // untouched since `best` was copied from it, so a new record copies only the rest.
    let mut best: Vec<usize> = Vec::new();
    let mut best_value = None;
    let mut agreed = 0usize;

    // Completed operations are tried before unknown-outcome ones at every configuration, so the
    // configuration that leaves the unknown ones out is explored (and memoized) first; it
    // dominates every variant that linearizes some of them, which the memo then prunes at once.
    let mut unknown_pass = false;
    let mut observers = Observers::default();
    let mut node = list.first();
    loop {
        if completed_done == completed_total {
            // Unknown-outcome operations still pending can be left out.
            return Search {
                outcome: Outcome::Linearizable,
                states: memo.len(),
            };
        }

        let Some(index) = list.call_at(node) else {
            // A return (or the end): everything before it has been tried from this configuration.
            if !unknown_pass && unknown_done < unknown_total {
                unknown_pass = true;
                observers.survey(&list, ops, &blind, value);
                node = list.first();
                continue;
            }
            let Some(frame) = stack.pop() else {
                return Search {
                    outcome: Outcome::NotLinearizable {
                        prefix: best,
                        value: best_value,
                    },
                    states: memo.len(),
                };
            };
            value = frame.previous;
            match slots[frame.op] {
                Slot::Completed(bit) => {
                    toggle(&mut completed_bits, bit);
                    completed_hash ^= zobrist(COMPLETED_SEED, bit);
                    completed_done -= 1;
                    unknown_pass = false;
                }
                Slot::Unknown(bit) => {
                    toggle(&mut unknown_bits, bit);
                    unknown_hash ^= zobrist(UNKNOWN_SEED, bit);
                    unknown_done -= 1;
                    unknown_pass = true;
                }
            }
            list.relink(frame.op);
            if unknown_pass {
                observers.survey(&list, ops, &blind, value);
            }
            agreed = agreed.min(stack.len());
            node = list.after_call(frame.op);
            continue;
        };

        let slot = slots[index];
        let is_unknown = matches!(slot, Slot::Unknown(_));
        if is_unknown == unknown_pass {
            let op = &ops[index];
            // Linearizations that cannot matter are skipped. Leaving out an unknown-outcome
            // operation is always allowed, and it precedes nothing in real time, so it can also
            // be moved later; the search still meets an equivalent linearization:
            // - an unknown-outcome operation that would not change the register: without it the
            //   value is the same and fewer operations are committed;
            // - an unknown-outcome operation changing the value to one that no candidate
            //   operation (the only ones that can come right after it) tells apart from the
            //   current value: in a linearization it can be moved past the operation after it,
            //   or dropped if nothing follows, so taking that operation first suffices;
            // - all but one unknown-outcome put of a value nobody reads or expects (`blind`);
            // - a put right after an unknown-outcome operation: the put overwrites that
            //   operation's effect unobserved, and real-time order lets the put go first without
            //   it, which is tried from the configuration one level down.
            let after_unknown = stack
                .last()
                .is_some_and(|frame| matches!(slots[frame.op], Slot::Unknown(_)));
            let pointless = (after_unknown && matches!(op.op, Op::Put { .. }))
                || (blind[index] && observers.blind_representative != Some(index));
            let next = effect(value, op.op, op.result()).filter(|next| {
                !pointless && !(is_unknown && (*next == value || !observers.notice(*next)))
            });
            if let Some(next) = next {
                match slot {
                    Slot::Completed(bit) => {
                        toggle(&mut completed_bits, bit);
                        completed_hash ^= zobrist(COMPLETED_SEED, bit);
                    }
                    Slot::Unknown(bit) => {
                        toggle(&mut unknown_bits, bit);
                        unknown_hash ^= zobrist(UNKNOWN_SEED, bit);
                    }
                }
                let group_hash = completed_hash ^ value_hash(next);
                let fresh = memo.record(
                    group_hash,
                    group_hash ^ unknown_hash,
                    &completed_bits,
                    &unknown_bits,
                    next,
                );
                if fresh {
                    if memo.len() > max_states {
                        return Search {
                            outcome: Outcome::BudgetExhausted,
                            states: memo.len(),
                        };
                    }
                    stack.push(Frame {
                        op: index,
                        previous: value,
                    });
                    value = next;
                    if is_unknown {
                        unknown_done += 1;
                    } else {
                        completed_done += 1;
                    }
                    list.unlink(index);
                    if stack.len() > best.len() {
                        best.truncate(agreed);
                        best.extend(stack[agreed..].iter().map(|frame| frame.op));
                        agreed = stack.len();
                        best_value = value;
                    }
                    unknown_pass = false;
                    node = list.first();
                    continue;
                }
                // Already ruled out: undo the tentative bit and try the next candidate.
                match slot {
                    Slot::Completed(bit) => {
                        toggle(&mut completed_bits, bit);
                        completed_hash ^= zobrist(COMPLETED_SEED, bit);
                    }
                    Slot::Unknown(bit) => {
                        toggle(&mut unknown_bits, bit);
                        unknown_hash ^= zobrist(UNKNOWN_SEED, bit);
                    }
                }
            }
        }
        node = list.next_of(node);
    }
}

/// What the candidate operations of a configuration (those whose calls precede the first return
/// in the list) can tell apart from its register value.
#[derive(Default)]
struct Observers {
    /// Values that some candidate accepts and the current value does not give it: what
    /// completed gets read, and what successful or unknown-outcome compare-and-sets expect.
    wanted: Vec<Option<u64>>,
    /// Some candidate compare-and-set reported failure although it expects the current value:
    /// any other value is noticed by it.
    failing_cas_expects_current: bool,
    /// The first candidate interchangeable ("blind") unknown-outcome put that would change the
    /// value: the only one of them worth trying.
    blind_representative: Option<usize>,
}

impl Observers {
    fn survey(&mut self, list: &EventList, ops: &[KeyOp], blind: &[bool], value: Option<u64>) {
        self.wanted.clear();
        self.failing_cas_expects_current = false;
        self.blind_representative = None;
        let mut node = list.first();
        while let Some(index) = list.call_at(node) {
            match (ops[index].op, ops[index].result()) {
                (Op::Put { value: written }, None)
                    if blind[index]
                        && self.blind_representative.is_none()
                        && Some(written) != value =>
                {
                    self.blind_representative = Some(index);
                }
                (Op::Get, Some(OpResult::Get(read))) => self.wanted.push(read),
                (Op::Cas { expected, .. }, Some(OpResult::Cas(true))) => {
                    self.wanted.push(expected);
                }
                (Op::Cas { expected, .. }, Some(OpResult::Cas(false))) => {
                    self.failing_cas_expects_current |= expected == value;
                }
                // A compare-and-set that would not change the register is never linearized.
                (Op::Cas { expected, new }, None) if expected != Some(new) => {
                    self.wanted.push(expected);
                }
                _ => {}
            }
            node = list.next_of(node);
        }
    }

    /// Whether a candidate would behave differently after the value changed to `next` (never the
    /// current value) than without the change.
    fn notice(&self, next: Option<u64>) -> bool {
        self.failing_cas_expects_current || self.wanted.contains(&next)
    }
}

/// An operation's number among the completed or among the unknown-outcome operations.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Completed(usize),
    Unknown(usize),
}

/// A linearized operation and the register value before it, to undo it on backtracking.
#[derive(Clone, Copy, Debug)]
struct Frame {
    op: usize,
    previous: Option<u64>,
}

fn toggle(bits: &mut [u64], bit: usize) {
    if let Some(word) = bits.get_mut(bit / 64) {
        *word ^= 1 << (bit % 64);
    }
}

/// SplitMix64's finalizer: a cheap, well-mixed 64-bit permutation.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const COMPLETED_SEED: u64 = 0x243F_6A88_85A3_08D3;
const UNKNOWN_SEED: u64 = 0x1319_8A2E_0370_7344;

/// Zobrist key of operation `bit` of one class: a set's hash is the XOR of its members' keys.
fn zobrist(seed: u64, bit: usize) -> u64 {
    mix(mix(seed ^ bit as u64))
}

fn value_hash(value: Option<u64>) -> u64 {
    match value {
        Some(value) => mix(value ^ 0xA5A5_A5A5_0000_0001),
        None => 0x0DDB_A11C_AFE0_F00D,
    }
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// The doubly-linked list of call and return events; node 0 is a sentinel head.
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: the operation index, and whether it is the operation's call.
    event: Vec<(usize, bool)>,
    /// Per operation: its call node and its return node (`NIL` for unknown outcomes, whose
    /// return is at +infinity and is never reached before every completed one is linearized).
    call: Vec<usize>,
    ret: Vec<usize>,
}

impl EventList {
    fn new(ops: &[KeyOp]) -> Self {
        // Sorted by time with calls before returns at equal times: an operation completing at t
        // overlaps one invoked at t.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (index, op) in ops.iter().enumerate() {
            events.push((op.invoke, false, index));
            if let Some((at, _)) = op.completed {
                events.push((at, true, index));
            }
        }
        events.sort_unstable();

        let nodes = events.len() + 1;
        let mut list = Self {
            next: (1..=nodes)
                .map(|n| if n == nodes { NIL } else { n })
                .collect(),
            prev: (0..nodes).map(|n| n.wrapping_sub(1)).collect(),
            event: Vec::with_capacity(nodes),
            call: vec![NIL; ops.len()],
            ret: vec![NIL; ops.len()],
        };
        list.event.push((NIL, false));
        for (position, (_, is_return, index)) in events.into_iter().enumerate() {
            let node = position + 1;
            list.event.push((index, !is_return));
            if is_return {
                list.ret[index] = node;
            } else {
                list.call[index] = node;
            }
        }
        list
    }

    fn first(&self) -> usize {
        self.next[HEAD]
    }

    fn next_of(&self, node: usize) -> usize {
        self.next.get(node).copied().unwrap_or(NIL)
    }

    /// The node after operation `op`'s call (valid while the call is linked).
    fn after_call(&self, op: usize) -> usize {
        self.next_of(self.call[op])
    }

    /// The operation whose call is at `node`, or `None` at a return or the end of the list.
    fn call_at(&self, node: usize) -> Option<usize> {
        match self.event.get(node) {
            Some(&(op, true)) => Some(op),
            _ => None,
        }
    }

    fn unlink(&mut self, op: usize) {
        self.remove(self.call[op]);
        self.remove(self.ret[op]);
    }

    /// Undoes `unlink(op)`; must be called in reverse order of the unlinks.
    fn relink(&mut self, op: usize) {
        self.restore(self.ret[op]);
        self.restore(self.call[op]);
    }

    fn remove(&mut self, node: usize) {
        if node == NIL {
            return;
        }
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn restore(&mut self, node: usize) {
        if node == NIL {
            return;
        }
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }
}

/// How many recorded configurations per (completed set, value) the dominance test compares
/// against. Pruning fewer dominated configurations is always sound (they are explored instead),
/// and the bound keeps every lookup O(1) in the number of configurations, so reaching the search
/// budget takes time proportional to the budget.
const DOMINANCE_CANDIDATES: usize = 8;

/// The memo: every configuration recorded so far.
///
/// A configuration is recorded the first time the search reaches it; since the search is
/// depth-first, one it meets again has been (or is being) explored already, and is skipped
/// (exact matches, found through a hash of the whole configuration). A configuration is also
/// dominated by a recorded one with the same completed set and value whose unknown-outcome set is
/// a subset of its own, because any continuation from it works from the recorded one too (the
/// extra unknown-outcome operations are simply left out). For that test each (completed set,
/// value) keeps the few recorded configurations with the fewest unknown-outcome operations, the
/// ones most likely to dominate.
struct Memo {
    completed_words: usize,
    unknown_words: usize,
    /// Entry `e`'s completed bits then unknown bits, at `e * (completed_words + unknown_words)`.
    bits: Vec<u64>,
    values: Vec<Option<u64>>,
    /// Per entry: how many unknown-outcome operations it has linearized.
    unknown_counts: Vec<u32>,
    /// Per entry: the next older entry with the same whole-configuration hash, or `NIL`.
    exact_chain: Vec<usize>,
    /// The newest entry for each whole-configuration hash.
    exact: HashMap<u64, usize, BuildHasherDefault<PassThrough>>,
    /// Per (completed set, value) hash: the entries the dominance test compares against.
    groups: HashMap<u64, Group, BuildHasherDefault<PassThrough>>,
}

/// Up to [`DOMINANCE_CANDIDATES`] entries of one (completed set, value).
#[derive(Clone, Copy)]
struct Group {
    len: usize,
    entries: [usize; DOMINANCE_CANDIDATES],
}

impl Memo {
    fn new(completed_words: usize, unknown_words: usize) -> Self {
        Self {
            completed_words,
            unknown_words,
            bits: Vec::new(),
            values: Vec::new(),
            unknown_counts: Vec::new(),
            exact_chain: Vec::new(),
            exact: HashMap::default(),
            groups: HashMap::default(),
        }
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    fn entry_bits(&self, entry: usize) -> (&[u64], &[u64]) {
        let stride = self.completed_words + self.unknown_words;
        let start = entry * stride;
        self.bits[start..start + stride].split_at(self.completed_words)
    }

    /// Records the configuration and returns true, or returns false if it equals or is dominated
    /// by one already recorded. `group_hash` hashes the completed set and value, `exact_hash`
    /// the whole configuration.
    fn record(
        &mut self,
        group_hash: u64,
        exact_hash: u64,
        completed: &[u64],
        unknown: &[u64],
        value: Option<u64>,
    ) -> bool {
        let mut entry = self.exact.get(&exact_hash).copied().unwrap_or(NIL);
        while entry != NIL {
            let (seen_completed, seen_unknown) = self.entry_bits(entry);
            if self.values[entry] == value && seen_completed == completed && seen_unknown == unknown
            {
                return false;
            }
            entry = self.exact_chain[entry];
        }

        // Without unknown-outcome operations every configuration's unknown set is empty, so
        // dominance is equality, already tested.
        let group = if self.unknown_words == 0 {
            None
        } else {
            self.groups.get(&group_hash).copied()
        };
        if let Some(group) = group {
            for &entry in &group.entries[..group.len] {
                let (seen_completed, seen_unknown) = self.entry_bits(entry);
                if self.values[entry] == value
                    && seen_completed == completed
                    && seen_unknown
                        .iter()
                        .zip(unknown)
                        .all(|(seen, now)| seen & !now == 0)
                {
                    return false;
                }
            }
        }

        let entry = self.values.len();
        let count = unknown.iter().map(|word| word.count_ones()).sum();
        self.bits.extend_from_slice(completed);
        self.bits.extend_from_slice(unknown);
        self.values.push(value);
        self.unknown_counts.push(count);
        self.exact_chain
            .push(self.exact.insert(exact_hash, entry).unwrap_or(NIL));
        if self.unknown_words > 0 {
            match group {
                None => {
                    let mut entries = [NIL; DOMINANCE_CANDIDATES];
                    entries[0] = entry;
                    self.groups.insert(group_hash, Group { len: 1, entries });
                }
                Some(mut group) => {
                    if group.len < DOMINANCE_CANDIDATES {
                        group.entries[group.len] = entry;
                        group.len += 1;
                    } else if let Some(slot) = group
                        .entries
                        .iter_mut()
                        .max_by_key(|slot| self.unknown_counts[**slot])
                        .filter(|slot| self.unknown_counts[**slot] > count)
                    {
                        *slot = entry;
                    }
                    self.groups.insert(group_hash, group);
                }
            }
        }
        true
    }
}

/// A hasher for keys that are already well-mixed 64-bit hashes: SipHash over them again would
/// only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by the memo; this keeps the hasher correct for anything else.
        for byte in bytes {
            self.0 = mix(self.0 ^ u64::from(*byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}
