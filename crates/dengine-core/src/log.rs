//! The core's view of the log: an in-memory unstable tail in front of durable storage.
//!
//! Entries the core has appended but the runtime has not yet reported durable live in the
//! *unstable* tail and shadow whatever storage holds at the same indexes. The log also tracks
//! the four watermarks every rule is phrased in:
//! `applied <= applying <= committed`, `persisted <= last_index`.

use std::collections::VecDeque;

use crate::store::{LogReader, StorageError};
use crate::types::{Entry, EntryId, LogIndex, Term};

pub(crate) struct RaftLog<L> {
    pub(crate) store: L,
    /// Entries not yet known durable, consecutive from `unstable_offset`.
    unstable: VecDeque<Entry>,
    unstable_offset: LogIndex,
    /// Unstable entries from this index on have not been handed to the runtime to write yet.
    unwritten_from: LogIndex,
    /// Highest index known committed (§5.3).
    pub(crate) committed: LogIndex,
    /// Highest index known durable on this node *with the term the log now has there*.
    pub(crate) persisted: LogIndex,
    /// Highest index handed to the runtime for applying.
    pub(crate) applying: LogIndex,
    /// Highest index the runtime reported applied.
    pub(crate) applied: LogIndex,
}

impl<L: LogReader> RaftLog<L> {
    /// A log over `store`, which holds only durable entries.
    pub(crate) fn new(store: L, committed: LogIndex, applied: LogIndex) -> Self {
        let last = store.last_index();
        let first = store.first_index();
        // Whatever storage holds is durable. The saved commit index is only a lower bound
        // (it is written lazily): what the state machine applied was committed too, and so
        // is everything a snapshot covers. Taking the lower of the two would hand entries the
        // state machine already holds back to it after a restart.
        let floor = first.saturating_sub(1);
        let committed = committed.max(applied).max(floor).min(last.max(floor));
        let applied = applied.max(floor).min(committed);
        RaftLog {
            store,
            unstable: VecDeque::new(),
            unstable_offset: last + 1,
            unwritten_from: last + 1,
            committed,
            persisted: last,
            applying: applied,
            applied,
        }
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        self.store.first_index()
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        if self.unstable.is_empty() {
            self.store.last_index()
        } else {
            self.unstable_offset + self.unstable.len() as u64 - 1
        }
    }

    pub(crate) fn last_id(&self) -> EntryId {
        let index = self.last_index();
        // The last index always has a term: it is either in the unstable tail or in storage
        // (or is the compaction point). A storage failure degrades to term 0, which only makes
        // this node look less up to date.
        EntryId::new(self.term(index).unwrap_or(0), index)
    }

    pub(crate) fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index >= self.unstable_offset && !self.unstable.is_empty() {
            return match self.unstable.get((index - self.unstable_offset) as usize) {
                Some(e) => Ok(e.term),
                None => Err(StorageError::Unavailable {
                    index,
                    last_index: self.last_index(),
                }),
            };
        }
        if index == 0 {
            return Ok(0);
        }
        self.store.term(index)
    }

    /// Whether the log holds an entry with this id (Log Matching, §5.3).
    pub(crate) fn matches(&self, id: EntryId) -> bool {
        self.term(id.index).is_ok_and(|t| t == id.term)
    }

    /// §5.4.1: a candidate's log is at least as up to date as ours if its last term is higher,
    /// or the same with an index at least as large.
    pub(crate) fn is_up_to_date(&self, candidate_last: EntryId) -> bool {
        let ours = self.last_id();
        candidate_last.term > ours.term
            || (candidate_last.term == ours.term && candidate_last.index >= ours.index)
    }

    /// The first entry of `entries` that is not already in the log (a different term at its
    /// index, or past the end), if any.
    pub(crate) fn find_conflict(&self, entries: &[Entry]) -> Option<usize> {
        entries.iter().position(|e| !self.matches(e.id()))
    }

    /// First index of the run of entries with `term` that ends at `index` (for the conflict
    /// hint, §5.3). Stops at the compaction point.
    pub(crate) fn first_index_of_term(&self, term: Term, index: LogIndex) -> LogIndex {
        let floor = self.first_index();
        let mut i = index;
        while i > floor && self.term(i - 1).is_ok_and(|t| t == term) {
            i -= 1;
        }
        i
    }

    /// Last index at or before `index` whose term is at most `term` (leader side of the
    /// conflict hint).
    pub(crate) fn last_index_with_term_at_most(&self, term: Term, index: LogIndex) -> LogIndex {
        let floor = self.first_index().saturating_sub(1);
        let mut i = index.min(self.last_index());
        while i > floor {
            match self.term(i) {
                Ok(t) if t <= term => return i,
                Ok(_) => i -= 1,
                Err(_) => return floor,
            }
        }
        floor
    }

    /// Appends entries that continue the log (leader side).
    pub(crate) fn append(&mut self, entries: impl IntoIterator<Item = Entry>) {
        if self.unstable.is_empty() {
            self.unstable_offset = self.last_index() + 1;
        }
        for e in entries {
            // Invariant: callers build entries at last_index() + 1, consecutively.
            debug_assert_eq!(e.index, self.last_index() + 1);
            self.unstable.push_back(e);
        }
    }

    /// Writes `entries` over the log from `entries[0].index` on (follower side, after
    /// `find_conflict`). Entries from that index on are discarded, durable or not.
    pub(crate) fn truncate_and_append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let after = first.index;
        // Invariant: committed entries are never overwritten (Leader Completeness, §5.4);
        // the caller rejects messages that would do so before getting here.
        assert!(
            after > self.committed,
            "truncating committed entry {after} (commit {})",
            self.committed
        );
        if after < self.unstable_offset || self.unstable.is_empty() {
            self.unstable.clear();
            self.unstable_offset = after;
        } else {
            self.unstable
                .truncate((after - self.unstable_offset) as usize);
        }
        self.unstable.extend(entries.iter().cloned());
        self.unwritten_from = self.unwritten_from.min(after);
        self.persisted = self.persisted.min(after - 1);
    }

    /// Whether some entries have not yet been handed to the runtime to write.
    pub(crate) fn has_unwritten(&self) -> bool {
        self.unwritten_from <= self.last_index() && !self.unstable.is_empty()
    }

    /// Hands the unwritten entries to the runtime.
    pub(crate) fn take_unwritten(&mut self) -> Vec<Entry> {
        if !self.has_unwritten() {
            return Vec::new();
        }
        let from = self.unwritten_from.max(self.unstable_offset);
        let skip = (from - self.unstable_offset) as usize;
        let out: Vec<Entry> = self.unstable.iter().skip(skip).cloned().collect();
        self.unwritten_from = self.last_index() + 1;
        out
    }

    /// The runtime reports that a write ending with `last` is durable. Only counts if the log
    /// still holds that exact entry: an index overwritten meanwhile is not durable (ABA).
    pub(crate) fn on_persisted(&mut self, last: EntryId) -> bool {
        if last.index >= self.unwritten_from || !self.matches(last) {
            return false;
        }
        if last.index > self.persisted {
            self.persisted = last.index;
        }
        while self.unstable.front().is_some_and(|e| e.index <= last.index) {
            self.unstable.pop_front();
            self.unstable_offset += 1;
        }
        true
    }

    /// The runtime replaced the log with a snapshot ending at `last`: everything before and
    /// at it is durable, committed and applied; the reader's log now starts after it.
    pub(crate) fn restore(&mut self, last: EntryId) {
        self.unstable.clear();
        self.unstable_offset = last.index + 1;
        self.unwritten_from = last.index + 1;
        self.committed = self.committed.max(last.index);
        self.persisted = last.index;
        self.applying = last.index;
        self.applied = last.index;
    }

    pub(crate) fn commit_to(&mut self, index: LogIndex) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Entries in `[low, high)`, limited by `max_bytes` (at least one when the range is not
    /// empty).
    pub(crate) fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low >= high {
            return Ok(Vec::new());
        }
        // Sized up front: growing by doubling was ~3% of the instructions per entry in
        // `cargo xtask bench core` (replication and apply read every entry through here).
        let mut out = Vec::with_capacity(usize::try_from(high - low).unwrap_or(0).min(1024));
        if low < self.first_index() {
            return Err(StorageError::Compacted {
                index: low,
                first_index: self.first_index(),
            });
        }
        if high > self.last_index() + 1 {
            return Err(StorageError::Unavailable {
                index: high - 1,
                last_index: self.last_index(),
            });
        }
        let stored_high = high.min(self.unstable_offset);
        if low < stored_high {
            self.store.entries(low, stored_high, max_bytes, &mut out)?;
            if out.len() as u64 != stored_high - low {
                return Ok(out);
            }
        }
        let from = low.max(self.unstable_offset);
        if from >= high {
            return Ok(out);
        }
        let mut bytes: u64 = out.iter().map(Entry::size_bytes).sum();
        for e in self
            .unstable
            .iter()
            .skip((from - self.unstable_offset) as usize)
            .take((high - from) as usize)
        {
            bytes += e.size_bytes();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    /// Committed, durable entries not yet handed out for applying, up to `max_bytes`.
    /// Only durable entries are applied, so a crash never leaves the state machine ahead of
    /// the log.
    pub(crate) fn next_committed(&mut self, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let high = self.committed.min(self.persisted) + 1;
        let low = self.applying + 1;
        let out = self.entries(low, high, max_bytes)?;
        if let Some(last) = out.last() {
            self.applying = last.index;
        }
        Ok(out)
    }

    pub(crate) fn has_next_committed(&self) -> bool {
        self.committed.min(self.persisted) > self.applying
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, PersistRequest};
    use crate::types::{EntryPayload, Membership, SnapshotMeta};

    fn e(term: Term, index: LogIndex) -> Entry {
        Entry::new(term, index, EntryPayload::Blank)
    }

    fn store_with(entries: &[Entry]) -> MemoryStore {
        let store = MemoryStore::new();
        store
            .persist_now(&PersistRequest::new(None, entries.to_vec(), true))
            .unwrap();
        store
    }

    fn log_with(entries: &[Entry]) -> RaftLog<MemoryStore> {
        RaftLog::new(store_with(entries), 0, 0)
    }

    #[test]
    fn unstable_entries_shadow_storage() {
        let mut log = log_with(&[e(1, 1), e(1, 2), e(1, 3)]);
        log.truncate_and_append(&[e(2, 2)]);
        assert_eq!(log.last_id(), EntryId::new(2, 2));
        assert_eq!(log.term(1).ok(), Some(1));
        assert_eq!(
            log.persisted, 1,
            "the overwritten durable entries no longer count"
        );
        assert_eq!(log.entries(1, 3, u64::MAX).unwrap(), vec![e(1, 1), e(2, 2)]);
    }

    #[test]
    fn persistence_ack_for_an_overwritten_entry_is_ignored() {
        // ABA: index 3 was written with term 1, then overwritten with term 2 before the first
        // write finished. The ack of (1, 3) must not mark (2, 3) durable.
        let mut log = log_with(&[e(1, 1)]);
        log.append([e(1, 2), e(1, 3)]);
        assert_eq!(log.take_unwritten(), vec![e(1, 2), e(1, 3)]);
        log.truncate_and_append(&[e(2, 3)]);
        assert!(!log.on_persisted(EntryId::new(1, 3)));
        assert_eq!(log.persisted, 1);
        assert_eq!(log.take_unwritten(), vec![e(2, 3)]);
        assert!(log.on_persisted(EntryId::new(2, 3)));
        assert_eq!(log.persisted, 3);
    }

    #[test]
    fn restart_never_hands_applied_entries_back() {
        // The commit index is saved lazily; the state machine had applied further (found by
        // the simulator: re-applied compare-and-sets diverged the state).
        let store = store_with(&[e(1, 1), e(1, 2), e(1, 3), e(1, 4)]);
        let mut log = RaftLog::new(store, 1, 3);
        assert_eq!((log.committed, log.applied), (3, 3));
        assert_eq!(log.next_committed(u64::MAX).unwrap(), vec![]);
    }

    #[test]
    fn up_to_date_compares_last_term_then_index() {
        let log = log_with(&[e(1, 1), e(2, 2)]);
        assert!(log.is_up_to_date(EntryId::new(3, 1)));
        assert!(log.is_up_to_date(EntryId::new(2, 2)));
        assert!(!log.is_up_to_date(EntryId::new(2, 1)));
        assert!(!log.is_up_to_date(EntryId::new(1, 5)));
    }

    #[test]
    fn committed_entries_wait_for_local_durability() {
        let mut log = log_with(&[e(1, 1)]);
        log.append([e(1, 2)]);
        log.commit_to(2);
        assert_eq!(log.next_committed(u64::MAX).unwrap(), vec![e(1, 1)]);
        assert!(!log.has_next_committed());
        let written = log.take_unwritten();
        log.store
            .persist_now(&PersistRequest::new(None, written, true))
            .unwrap();
        log.on_persisted(EntryId::new(1, 2));
        assert_eq!(log.next_committed(u64::MAX).unwrap(), vec![e(1, 2)]);
    }

    #[test]
    fn conflict_search_helpers() {
        let log = log_with(&[e(1, 1), e(2, 2), e(2, 3), e(2, 4), e(5, 5)]);
        assert_eq!(log.first_index_of_term(2, 4), 2);
        assert_eq!(log.last_index_with_term_at_most(3, 5), 4);
        assert_eq!(log.last_index_with_term_at_most(0, 5), 0);
        assert_eq!(log.find_conflict(&[e(2, 3), e(3, 4)]), Some(1));
        assert_eq!(log.find_conflict(&[e(2, 3), e(2, 4)]), None);
        assert_eq!(log.find_conflict(&[e(5, 5), e(5, 6)]), Some(1));
    }

    #[test]
    fn conflict_hint_term_start_stops_at_first_index() {
        // §5.3 conflict hint: the run of the conflicting term is searched only among the
        // entries the log still holds, even when the snapshot's last entry has that term.
        let log = log_with(&[e(1, 1), e(2, 2), e(2, 3), e(2, 4), e(3, 5)]);
        log.store.purge_now(2).unwrap();
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.first_index_of_term(2, 4), 3);
    }

    #[test]
    fn commit_to_reports_only_an_advance() {
        let mut log = log_with(&[e(1, 1), e(1, 2)]);
        assert!(log.commit_to(1));
        assert!(!log.commit_to(1), "already committed: not news");
        assert!(!log.commit_to(0));
        assert!(log.commit_to(5), "capped at the last index");
        assert_eq!(log.committed, 2);
        assert!(
            !log.commit_to(5),
            "capped at the commit index it already has"
        );
    }

    #[test]
    fn entries_past_the_end_report_the_last_index_asked_for() {
        let mut log = log_with(&[e(1, 1)]);
        log.append([e(1, 2)]);
        let err = log.entries(1, 5, u64::MAX).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Unavailable {
                    index: 4,
                    last_index: 2
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn entries_from_the_unstable_tail_stop_before_high() {
        let mut log = log_with(&[e(1, 1)]);
        log.append([e(1, 2), e(1, 3), e(1, 4), e(1, 5)]);
        assert_eq!(log.entries(2, 4, u64::MAX).unwrap(), vec![e(1, 2), e(1, 3)]);
        assert_eq!(log.entries(3, 5, u64::MAX).unwrap(), vec![e(1, 3), e(1, 4)]);
        assert_eq!(log.entries(1, 3, u64::MAX).unwrap(), vec![e(1, 1), e(1, 2)]);
    }

    #[test]
    fn restore_leaves_nothing_to_write_and_counts_the_snapshot_point_durable() {
        // §7: after a leader's snapshot is installed, everything up to its last entry is
        // written and durable; writes of the replaced log no longer count.
        let mut log = log_with(&[e(1, 1), e(1, 2)]);
        log.append([e(1, 3), e(1, 4)]);
        assert_eq!(log.take_unwritten().len(), 2);
        let last = EntryId::new(3, 9);
        log.store
            .reset_to_snapshot_now(&SnapshotMeta {
                last_included: last,
                membership: Membership::new([1]),
            })
            .unwrap();
        log.restore(last);
        assert_eq!((log.first_index(), log.last_id()), (10, last));
        assert_eq!((log.committed, log.persisted, log.applied), (9, 9, 9));
        assert!(!log.has_unwritten());
        assert!(!log.on_persisted(EntryId::new(1, 4)));
        assert!(log.on_persisted(last));
        assert_eq!(log.persisted, 9);
    }
}
