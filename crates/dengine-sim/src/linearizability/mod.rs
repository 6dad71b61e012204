//! Linearizability checking of the key-value histories that the simulator records.
//!
//! The simulator records every client operation against the replicated key-value store as an
//! interval of logical time (invocation to completion, or to "unknown" when the client gave up)
//! together with the result the client saw. This module decides whether such a [`History`] is
//! *linearizable* (Herlihy & Wing 1990): whether every operation can be given a single point in
//! time within its interval such that, taken in the order of those points, the results are what a
//! single sequential register per key would have returned.
//!
//! Linearizability is compositional, so each key is checked on its own as one register holding
//! `Option<u64>` (`None` = absent; every key starts absent) with [`Op::Put`], [`Op::Get`] and
//! [`Op::Cas`]. A key's sub-history is searched with the algorithm of Wing & Gong 1993 ("Testing
//! and verifying concurrent objects"): walk a doubly-linked list of call and return events,
//! tentatively linearize any operation whose call precedes the first outstanding return, and
//! backtrack when a return is reached whose operation has not been linearized. Like Lowe 2017
//! ("Testing for linearizability") the search memoizes the configurations it has already ruled
//! out, a configuration being the set of linearized operations (a bitset) and the register value,
//! which turns the exponential search into one that is linear in the history for the small
//! number of concurrent clients the simulator runs. Backtracking uses an explicit stack, so
//! histories of any length cannot overflow the call stack.
//!
//! Operations whose outcome is unknown (the client timed out) may have taken effect at any point
//! after their invocation, or never: their return is at +infinity and the search may leave them
//! out. Naively every pending timed-out write doubles the search, so the search exploits that
//! freedom. A configuration that differs from an already ruled-out one only by having linearized
//! *more* unknown-outcome operations is ruled out too. An unknown-outcome write is only tried
//! where the operation right after it could observe it. Timed-out puts of values nobody ever
//! reads are interchangeable, so only one of them is tried. Together these keep a long run with
//! many timed-out writes close to the cost of one without them; the tests cross-check every rule
//! against a brute-force checker.
//!
//! [`check`] returns a [`Verdict`]; a failure names the key and carries a [`Violation`] whose
//! `Display` explains it. A per-key budget on explored configurations ([`CheckOptions`]) turns a
//! pathological history into [`Verdict::Inconclusive`] instead of an endless search.

use std::collections::BTreeMap;
use std::fmt;

mod model;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
mod wgl;

use model::{KeyOp, ValueText, effect};
pub use model::{Op, OpResult};

/// How an operation ended, as far as its client knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The client received `result` at logical time `at`.
    Completed {
        /// Logical time of the completion; never earlier than the invocation.
        at: u64,
        /// What the client observed.
        result: OpResult,
    },
    /// The client never learned the outcome (it timed out or crashed): the operation may have
    /// taken effect at any time after its invocation, or not at all.
    Unknown,
}

/// One recorded operation of a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    /// The client that issued the operation. Only used in reports.
    pub client: u64,
    /// The key the operation acts on.
    pub key: u64,
    /// What was asked.
    pub op: Op,
    /// Logical time of the invocation.
    pub invoke: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Identifies an operation within the [`History`] that assigned it (its position in
/// [`History::operations`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(usize);

impl OpId {
    /// The position of the operation in [`History::operations`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// A history was given an operation or a completion it cannot hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryError {
    /// The id was not handed out by this history.
    NoSuchOperation {
        /// The offending id.
        id: OpId,
    },
    /// The operation was already completed or marked unknown.
    AlreadyResolved {
        /// The operation.
        id: OpId,
    },
    /// The result is not of the kind the operation completes with, e.g. a `bool` for a get.
    ResultMismatch {
        /// The operation (for [`History::push`], the id it would have received).
        id: OpId,
        /// What the operation asked.
        op: Op,
        /// The mismatching result.
        result: OpResult,
    },
    /// The completion time is earlier than the invocation time.
    CompletedBeforeInvoked {
        /// The operation (for [`History::push`], the id it would have received).
        id: OpId,
        /// Its invocation time.
        invoke: u64,
        /// The offending completion time.
        completed: u64,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::NoSuchOperation { id } => {
                write!(f, "operation {id} does not belong to this history")
            }
            HistoryError::AlreadyResolved { id } => {
                write!(f, "operation {id} was already completed or marked unknown")
            }
            HistoryError::ResultMismatch { id, op, result } => {
                write!(
                    f,
                    "operation {id} ({op}) cannot complete with result {result}"
                )
            }
            HistoryError::CompletedBeforeInvoked {
                id,
                invoke,
                completed,
            } => write!(
                f,
                "operation {id} completed at {completed}, before it was invoked at {invoke}"
            ),
        }
    }
}

impl std::error::Error for HistoryError {}

/// A recorded history of operations on the key-value store.
///
/// Built either incrementally, as the simulator runs ([`History::invoke`], then
/// [`History::complete`] or [`History::unknown`]), or from finished [`Operation`] values
/// ([`History::push`]). Every operation is validated when it is resolved, so a history always
/// holds well-formed operations. An operation still pending when the history is checked is
/// treated as [`Outcome::Unknown`]: its client never learned what happened to it.
///
/// Times are from one logical clock and need not be added in order. Operation A precedes B in
/// real time iff A completed strictly before B was invoked; equal times mean the two overlap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    operations: Vec<Operation>,
    /// Whether each operation has been completed or marked unknown, so it is resolved only once.
    resolved: Vec<bool>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` invoked `op` on `key` at logical time `at`. The operation stays
    /// pending (and counts as unknown) until [`History::complete`] or [`History::unknown`].
    pub fn invoke(&mut self, client: u64, key: u64, op: Op, at: u64) -> OpId {
        let id = OpId(self.operations.len());
        self.operations.push(Operation {
            client,
            key,
            op,
            invoke: at,
            outcome: Outcome::Unknown,
        });
        self.resolved.push(false);
        id
    }

    /// Records that operation `id` completed at logical time `at` with `result`.
    ///
    /// # Errors
    ///
    /// Fails, leaving the history unchanged, if `id` is not from this history, the operation was
    /// already resolved, `result` is of the wrong kind, or `at` precedes the invocation.
    pub fn complete(&mut self, id: OpId, at: u64, result: OpResult) -> Result<(), HistoryError> {
        let outcome = Outcome::Completed { at, result };
        let operation = self.pending_mut(id)?;
        validate(id, operation.op, operation.invoke, outcome)?;
        operation.outcome = outcome;
        self.mark_resolved(id);
        Ok(())
    }

    /// Records that the client of operation `id` gave up on it without learning its outcome.
    ///
    /// # Errors
    ///
    /// Fails if `id` is not from this history or the operation was already resolved.
    pub fn unknown(&mut self, id: OpId) -> Result<(), HistoryError> {
        self.pending_mut(id)?;
        self.mark_resolved(id);
        Ok(())
    }

    /// Appends a finished operation.
    ///
    /// # Errors
    ///
    /// Fails, leaving the history unchanged, if a completed result is of the wrong kind for the
    /// operation or completes before the invocation.
    pub fn push(&mut self, operation: Operation) -> Result<OpId, HistoryError> {
        let id = OpId(self.operations.len());
        validate(id, operation.op, operation.invoke, operation.outcome)?;
        self.operations.push(operation);
        self.resolved.push(true);
        Ok(id)
    }

    /// All operations, indexed by [`OpId::index`]. Pending ones show [`Outcome::Unknown`].
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The operation with this id, if it belongs to this history.
    pub fn get(&self, id: OpId) -> Option<&Operation> {
        self.operations.get(id.0)
    }

    /// Number of operations recorded.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// Whether no operation has been recorded.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    fn pending_mut(&mut self, id: OpId) -> Result<&mut Operation, HistoryError> {
        match (self.operations.get_mut(id.0), self.resolved.get(id.0)) {
            (Some(_), Some(true)) => Err(HistoryError::AlreadyResolved { id }),
            (Some(operation), Some(false)) => Ok(operation),
            _ => Err(HistoryError::NoSuchOperation { id }),
        }
    }

    fn mark_resolved(&mut self, id: OpId) {
        if let Some(flag) = self.resolved.get_mut(id.0) {
            *flag = true;
        }
    }
}

fn validate(id: OpId, op: Op, invoke: u64, outcome: Outcome) -> Result<(), HistoryError> {
    if let Outcome::Completed { at, result } = outcome {
        if !op.accepts(&result) {
            return Err(HistoryError::ResultMismatch { id, op, result });
        }
        if at < invoke {
            return Err(HistoryError::CompletedBeforeInvoked {
                id,
                invoke,
                completed: at,
            });
        }
    }
    Ok(())
}

/// Tuning of [`check_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Most configurations (set of linearized operations plus register value) the search may
    /// record for one key before giving up on that key with [`Verdict::Inconclusive`]. Each
    /// configuration takes roughly 100 bytes plus one bit per operation on the key, and time to
    /// reach the budget is proportional to it. Histories like the simulator's (a few clients, a
    /// few thousand operations over several keys) need a few thousand configurations per key.
    pub max_states_per_key: usize,
}

impl CheckOptions {
    /// The budget used by [`check`].
    pub const DEFAULT_MAX_STATES_PER_KEY: usize = 500_000;
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            max_states_per_key: Self::DEFAULT_MAX_STATES_PER_KEY,
        }
    }
}

/// The outcome of checking a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's sub-history is linearizable.
    Linearizable,
    /// Some key's sub-history is not linearizable; the violation is the one on the smallest such
    /// key. A proven violation is reported even if another key ran out of budget.
    NotLinearizable(Violation),
    /// No violation was found, but the search on `key` (the smallest such key) ran out of its
    /// budget, so the history could not be proven linearizable either.
    Inconclusive {
        /// The key whose search was abandoned.
        key: u64,
    },
}

impl Verdict {
    /// Whether the history was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    /// The violation, if the history was proven not linearizable.
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            Verdict::NotLinearizable(violation) => Some(violation),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "history is linearizable"),
            Verdict::NotLinearizable(violation) => violation.fmt(f),
            Verdict::Inconclusive { key } => write!(
                f,
                "inconclusive: the search on key {key} exceeded its budget without finding a \
                 linearization or proving there is none"
            ),
        }
    }
}

/// Why one key's sub-history is not linearizable. Its `Display` is the human-readable
/// explanation: the key's operations, the longest linearizable prefix the search found and why no
/// operation can follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key whose operations cannot be linearized.
    pub key: u64,
    /// Every operation on the key, in invoke order (ties by id), including unknown-outcome gets,
    /// which constrain nothing and are ignored by the search.
    pub operations: Vec<(OpId, Operation)>,
    /// The longest sequence of operations the search could linearize, in linearization order.
    /// Unknown-outcome operations in it are assumed to have taken effect at that point.
    pub longest_prefix: Vec<OpId>,
    /// The register value after `longest_prefix` (`None` = absent).
    pub value_after_prefix: Option<u64>,
    /// The operations that real-time order allows to come right after `longest_prefix`. None of
    /// them leads to a full linearization (completed ones mostly cannot take effect at all).
    pub next_candidates: Vec<OpId>,
}

impl Violation {
    fn operation(&self, id: OpId) -> Option<&Operation> {
        self.operations
            .iter()
            .find(|(candidate, _)| *candidate == id)
            .map(|(_, operation)| operation)
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {} is not linearizable.", self.key)?;
        writeln!(
            f,
            "Operations on key {} in invoke order ({}):",
            self.key,
            self.operations.len()
        )?;
        for (id, operation) in &self.operations {
            let ignored = if matches!(
                (operation.op, operation.outcome),
                (Op::Get, Outcome::Unknown)
            ) {
                "  (ignored: a read with unknown outcome constrains nothing)"
            } else {
                ""
            };
            writeln!(f, "  {id} {operation}{ignored}")?;
        }
        writeln!(
            f,
            "Longest linearizable prefix found ({} operations):",
            self.longest_prefix.len()
        )?;
        let mut value = None;
        for (position, id) in self.longest_prefix.iter().enumerate() {
            let Some(operation) = self.operation(*id) else {
                continue;
            };
            value = effect(value, operation.op, completed_result(operation)).unwrap_or(value);
            let assumed = if matches!(operation.outcome, Outcome::Unknown) {
                " (outcome unknown, assumed to take effect here)"
            } else {
                ""
            };
            writeln!(
                f,
                "  {}. {id} {} -> {}{assumed}; register now {}",
                position + 1,
                operation.op,
                ResultText(operation.outcome),
                ValueText(value)
            )?;
        }
        writeln!(
            f,
            "After it the register holds {}, and no operation that may come next leads to a \
             linearization:",
            ValueText(self.value_after_prefix)
        )?;
        for id in &self.next_candidates {
            let Some(operation) = self.operation(*id) else {
                continue;
            };
            let reason = match effect(
                self.value_after_prefix,
                operation.op,
                completed_result(operation),
            ) {
                Some(_) => {
                    "could take effect here, but nothing linearizable follows from it".to_owned()
                }
                None => refusal(self.value_after_prefix, operation),
            };
            writeln!(f, "  {id} {operation}: {reason}")?;
        }
        Ok(())
    }
}

/// Why completed `operation` cannot take effect on a register holding `value`.
fn refusal(value: Option<u64>, operation: &Operation) -> String {
    match (operation.op, operation.outcome) {
        (Op::Get, Outcome::Completed { .. }) => {
            format!(
                "cannot take effect: the register holds {}",
                ValueText(value)
            )
        }
        (Op::Cas { expected, .. }, Outcome::Completed { result, .. }) => {
            let verb = if result == OpResult::Cas(true) {
                "succeeded"
            } else {
                "failed"
            };
            format!(
                "cannot take effect: it {verb} although the register holds {} (expected {})",
                ValueText(value),
                ValueText(expected)
            )
        }
        _ => "cannot take effect here".to_owned(),
    }
}

/// Checks `history` with the default [`CheckOptions`].
pub fn check(history: &History) -> Verdict {
    check_with(history, &CheckOptions::default())
}

/// Checks `history` for linearizability, one key at a time in ascending key order.
pub fn check_with(history: &History, options: &CheckOptions) -> Verdict {
    let mut by_key: BTreeMap<u64, Vec<OpId>> = BTreeMap::new();
    for (index, operation) in history.operations.iter().enumerate() {
        by_key.entry(operation.key).or_default().push(OpId(index));
    }
    let mut inconclusive = None;
    for (key, mut ids) in by_key {
        let operations: Vec<(OpId, Operation)> = {
            ids.sort_by_key(|id| (history.operations[id.0].invoke, *id));
            ids.iter()
                .map(|id| (*id, history.operations[id.0]))
                .collect()
        };
        // An unknown-outcome read has no effect and no observed result, so it constrains
        // nothing; leaving it out keeps it from multiplying the search.
        let (search_ids, search_ops): (Vec<OpId>, Vec<KeyOp>) = operations
            .iter()
            .filter_map(|(id, operation)| key_op(operation).map(|op| (*id, op)))
            .unzip();
        match wgl::search(&search_ops, options.max_states_per_key).outcome {
            wgl::Outcome::Linearizable => {}
            wgl::Outcome::BudgetExhausted => {
                inconclusive.get_or_insert(key);
            }
            wgl::Outcome::NotLinearizable { prefix, value } => {
                let next_candidates = next_candidates(&search_ops, &prefix)
                    .into_iter()
                    .map(|index| search_ids[index])
                    .collect();
                return Verdict::NotLinearizable(Violation {
                    key,
                    operations,
                    longest_prefix: prefix.into_iter().map(|index| search_ids[index]).collect(),
                    value_after_prefix: value,
                    next_candidates,
                });
            }
        }
    }
    match inconclusive {
        Some(key) => Verdict::Inconclusive { key },
        None => Verdict::Linearizable,
    }
}

/// `operation` as the search sees it; `None` for operations that cannot constrain the
/// register (unknown-outcome gets).
fn key_op(operation: &Operation) -> Option<KeyOp> {
    let completed = match operation.outcome {
        Outcome::Completed { at, result } => Some((at, result)),
        Outcome::Unknown if operation.op == Op::Get => return None,
        Outcome::Unknown => None,
    };
    Some(KeyOp {
        op: operation.op,
        invoke: operation.invoke,
        completed,
    })
}

fn completed_result(operation: &Operation) -> Option<OpResult> {
    match operation.outcome {
        Outcome::Completed { result, .. } => Some(result),
        Outcome::Unknown => None,
    }
}

/// Indices of the operations not in `prefix` that real-time order allows next: those invoked no
/// later than the earliest completion among the completed operations not in `prefix`.
fn next_candidates(ops: &[KeyOp], prefix: &[usize]) -> Vec<usize> {
    let mut in_prefix = vec![false; ops.len()];
    for &index in prefix {
        if let Some(flag) = in_prefix.get_mut(index) {
            *flag = true;
        }
    }
    let earliest_return = ops
        .iter()
        .zip(&in_prefix)
        .filter(|(_, done)| !**done)
        .filter_map(|(op, _)| op.completed.map(|(at, _)| at))
        .min()
        .unwrap_or(u64::MAX);
    ops.iter()
        .enumerate()
        .filter(|(index, op)| !in_prefix[*index] && op.invoke <= earliest_return)
        .map(|(index, _)| index)
        .collect()
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Displays an outcome's result, or "unknown".
struct ResultText(Outcome);

impl fmt::Display for ResultText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Outcome::Completed { result, .. } => result.fmt(f),
            Outcome::Unknown => write!(f, "unknown"),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} {} [{}, ", self.client, self.op, self.invoke)?;
        match self.outcome {
            Outcome::Completed { at, .. } => write!(f, "{at}]")?,
            Outcome::Unknown => write!(f, "?]")?,
        }
        write!(f, " -> {}", ResultText(self.outcome))
    }
}
