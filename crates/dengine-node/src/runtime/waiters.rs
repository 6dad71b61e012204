//! [`Waiters`]: who waits for the entry at which index, in index order.
//!
//! Proposals append at the back (the leader assigns increasing indexes) and committed entries
//! resolve them from the front, so a deque sorted by index makes both O(1); a `BTreeMap`
//! allocated and rebalanced nodes on every proposal (about 9% of the instructions per
//! proposal in `cargo xtask bench core`). Out-of-order inserts and removals (rare) fall back to
//! a binary search.

use std::collections::VecDeque;

use tokio::time::Instant;

use bytes::Bytes;
use dengine_core::{LogIndex, Membership, Term};
use tokio::sync::oneshot;

use crate::error::{AdminError, ProposeError};

/// Someone waiting for the entry at some index to be applied.
pub(super) enum Waiter {
    Proposal {
        term: Term,
        /// When the proposer gets `ProposeError::Timeout` (outcome unknown).
        deadline: Instant,
        /// When the entry entered the leader's log (for the commit latency).
        appended: Instant,
        tx: oneshot::Sender<Result<Bytes, ProposeError>>,
        span: tracing::Span,
    },
    Config {
        term: Term,
        deadline: Instant,
        tx: oneshot::Sender<Result<Membership, AdminError>>,
    },
}

/// Waiters keyed by log index, sorted, at most one per index.
#[derive(Default)]
pub(super) struct Waiters {
    items: VecDeque<(LogIndex, Waiter)>,
}

impl Waiters {
    fn find(&self, index: LogIndex) -> Result<usize, usize> {
        self.items.binary_search_by_key(&index, |(i, _)| *i)
    }

    /// Adds the waiter for `index`, returning the one it replaces.
    pub(super) fn insert(&mut self, index: LogIndex, waiter: Waiter) -> Option<Waiter> {
        if self.items.back().is_none_or(|(last, _)| *last < index) {
            self.items.push_back((index, waiter));
            return None;
        }
        match self.find(index) {
            Ok(at) => Some(std::mem::replace(&mut self.items[at].1, waiter)),
            Err(at) => {
                self.items.insert(at, (index, waiter));
                None
            }
        }
    }

    /// Takes the waiter for `index`, if any.
    pub(super) fn remove(&mut self, index: LogIndex) -> Option<Waiter> {
        match self.items.front() {
            None => return None,
            Some((first, _)) if *first == index => return self.items.pop_front().map(|(_, w)| w),
            Some((first, _)) if *first > index => return None,
            Some(_) => {}
        }
        let at = self.find(index).ok()?;
        self.items.remove(at).map(|(_, w)| w)
    }

    /// How many requests wait for their entries to commit.
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    /// The waiters in index order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (LogIndex, &Waiter)> {
        self.items.iter().map(|(i, w)| (*i, w))
    }

    /// Keeps the waiters for which `keep` returns true.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(LogIndex, &mut Waiter) -> bool) {
        self.items.retain_mut(|(i, w)| keep(*i, w));
    }

    /// Splits off the waiters at `index` and after; `self` keeps those before.
    pub(super) fn split_off(&mut self, index: LogIndex) -> Waiters {
        let at = self.items.partition_point(|(i, _)| *i < index);
        Waiters {
            items: self.items.split_off(at),
        }
    }
}

impl IntoIterator for Waiters {
    type Item = (LogIndex, Waiter);
    type IntoIter = std::collections::vec_deque::IntoIter<(LogIndex, Waiter)>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use tokio::sync::oneshot;

    use super::*;

    fn waiter(term: u64) -> Waiter {
        let (tx, _rx) = oneshot::channel();
        Waiter::Proposal {
            term,
            deadline: Instant::now(),
            appended: Instant::now(),
            tx,
            span: tracing::Span::none(),
        }
    }

    fn term(w: &Waiter) -> u64 {
        match w {
            Waiter::Proposal { term, .. } | Waiter::Config { term, .. } => *term,
        }
    }

    fn indexes(w: &Waiters) -> Vec<LogIndex> {
        w.iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn keeps_index_order_and_one_waiter_per_index() {
        let mut w = Waiters::default();
        for i in [3, 5, 7] {
            assert!(w.insert(i, waiter(1)).is_none());
        }
        assert!(
            w.insert(4, waiter(1)).is_none(),
            "out of order goes in place"
        );
        let old = w.insert(5, waiter(2)).map(|old| term(&old));
        assert_eq!(
            old,
            Some(1),
            "the same index replaces and returns the old one"
        );
        assert_eq!(indexes(&w), vec![3, 4, 5, 7]);

        assert!(w.remove(2).is_none());
        assert!(w.remove(6).is_none());
        assert_eq!(w.remove(3).map(|x| term(&x)), Some(1));
        assert_eq!(w.remove(5).map(|x| term(&x)), Some(2), "from the middle");
        assert_eq!(indexes(&w), vec![4, 7]);

        w.insert(9, waiter(1));
        let rest = w.split_off(7);
        assert_eq!(indexes(&w), vec![4]);
        assert_eq!(indexes(&rest), vec![7, 9]);

        let mut all = rest;
        all.retain(|i, _| i != 9);
        assert_eq!(all.into_iter().map(|(i, _)| i).collect::<Vec<_>>(), vec![7]);
    }
}
