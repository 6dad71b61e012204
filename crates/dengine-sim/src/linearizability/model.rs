//! The sequential specification the checker holds histories against: a register per key,
//! the operations on it and what each does ([`effect`]).

use std::fmt;

/// An operation a client can invoke on one key of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Set the key to `value`. Completes with [`OpResult::Put`].
    Put {
        /// The value written.
        value: u64,
    },
    /// Read the key. Completes with [`OpResult::Get`] holding the value read (`None` = absent).
    Get,
    /// Compare-and-set: if the key currently holds `expected` (`None` = absent), set it to `new`.
    /// Completes with [`OpResult::Cas`] holding whether the swap happened.
    Cas {
        /// The value the key must hold for the swap to happen.
        expected: Option<u64>,
        /// The value written if the swap happens.
        new: u64,
    },
}

impl Op {
    /// Whether `result` is the kind of result this operation completes with (for example a
    /// [`OpResult::Get`] for an [`Op::Get`]).
    pub fn accepts(&self, result: &OpResult) -> bool {
        matches!(
            (self, result),
            (Op::Put { .. }, OpResult::Put)
                | (Op::Get, OpResult::Get(_))
                | (Op::Cas { .. }, OpResult::Cas(_))
        )
    }
}

/// The result a client observed when an operation completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// A [`Op::Put`] was acknowledged.
    Put,
    /// A [`Op::Get`] returned this value (`None` = absent).
    Get(Option<u64>),
    /// A [`Op::Cas`] reported whether it swapped.
    Cas(bool),
}

/// The operations of one key as the search sees them.
#[derive(Clone, Copy, Debug)]
pub(super) struct KeyOp {
    pub(super) op: Op,
    pub(super) invoke: u64,
    /// Completion time and result; `None` for an unknown outcome (completion at +infinity).
    pub(super) completed: Option<(u64, OpResult)>,
}

impl KeyOp {
    /// The result, `None` for an unknown outcome.
    pub(super) fn result(&self) -> Option<OpResult> {
        self.completed.map(|(_, result)| result)
    }
}

/// The register model: the value after applying `op` to a register holding `value`, or `None` if
/// the operation cannot have returned `result` there. `result` is `None` when the outcome is
/// unknown, and then any result is acceptable.
pub(super) fn effect(value: Option<u64>, op: Op, result: Option<OpResult>) -> Option<Option<u64>> {
    match (op, result) {
        (Op::Put { value: written }, _) => Some(Some(written)),
        (Op::Get, Some(OpResult::Get(read))) => (read == value).then_some(value),
        (Op::Get, None) => Some(value),
        (Op::Cas { expected, new }, result) => {
            let swaps = value == expected;
            match result {
                Some(OpResult::Cas(reported)) if reported != swaps => None,
                Some(OpResult::Cas(_)) | None => Some(if swaps { Some(new) } else { value }),
                Some(_) => None,
            }
        }
        // Validation in `History` rules out mismatched result kinds; they never fit the model.
        (Op::Get, Some(_)) => None,
    }
}

/// Displays a register value, `None` as "absent".
pub(super) struct ValueText(pub(super) Option<u64>);

impl fmt::Display for ValueText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value}"),
            None => write!(f, "absent"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put { value } => write!(f, "put({value})"),
            Op::Get => write!(f, "get"),
            Op::Cas { expected, new } => write!(f, "cas({} -> {new})", ValueText(*expected)),
        }
    }
}

impl fmt::Display for OpResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpResult::Put => write!(f, "ok"),
            OpResult::Get(value) => ValueText(*value).fmt(f),
            OpResult::Cas(swapped) => write!(f, "{swapped}"),
        }
    }
}
