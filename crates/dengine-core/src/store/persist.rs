//! [`PersistRequest`], the one write the core hands a [`LogStore`](super::LogStore) per
//! turn, and [`Persisted`], its acknowledgement back to the core.

use crate::types::{Entry, EntryId, HardState};

/// A write the runtime must make durable.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "the runtime must persist this and report it with Raft::on_persisted"]
pub struct PersistRequest {
    pub(crate) write_id: u64,
    /// New hard state to save, if it changed.
    pub hard_state: Option<HardState>,
    /// Entries to write: first discard every stored entry at or after `entries[0].index`, then
    /// append these.
    pub entries: Vec<Entry>,
    /// Whether the write must be synced to disk before it is reported done. False only when
    /// nothing but the commit index changed, which may be written lazily (losing it is safe).
    pub must_sync: bool,
    /// The last entry written by this write or an earlier one: acknowledging this write
    /// acknowledges it too (writes are durable in order).
    pub(crate) covers_entry: Option<EntryId>,
}

impl PersistRequest {
    /// A write that no `Raft` handed out, for storage tests, benchmarks and tools that drive a
    /// [`LogStore`](super::LogStore) directly. Its [`done`](Self::done) acknowledgement is
    /// ignored by every `Raft` (it names no write the core issued).
    pub fn new(hard_state: Option<HardState>, entries: Vec<Entry>, must_sync: bool) -> Self {
        let covers_entry = entries.last().map(Entry::id);
        PersistRequest {
            write_id: 0,
            hard_state,
            entries,
            must_sync,
            covers_entry,
        }
    }

    /// The acknowledgement to pass to [`Raft::on_persisted`](crate::Raft::on_persisted) once
    /// this write (and every earlier one) is durable.
    pub fn done(&self) -> Persisted {
        Persisted {
            write_id: self.write_id,
            last_entry: self.covers_entry,
        }
    }

    /// Folds `later`, a write handed out after this one, into this one, for a runtime that
    /// pipelines writes: while one write is on the disk, the writes the core hands out next
    /// can be combined into a single write with a single sync (group commit across turns).
    ///
    /// The combined write does exactly what the two would have done one after the other:
    /// entries from `later.entries[0].index` on replace this write's entries there (a
    /// follower's log was overwritten in between), the newer hard state wins, it syncs if
    /// either did, and its [`done`](Self::done) acknowledges both (acknowledgements are
    /// cumulative, see [`Raft::on_persisted`](crate::Raft::on_persisted)). Only merge writes
    /// that have not started, and always the later into the earlier.
    pub fn merge(&mut self, later: PersistRequest) {
        debug_assert!(later.write_id > self.write_id || later.write_id == 0);
        if let Some(first) = later.entries.first() {
            let keep = self.entries.partition_point(|e| e.index < first.index);
            self.entries.truncate(keep);
            // Consecutive writes never leave a gap: the later write continues the log or
            // overwrites part of it.
            debug_assert!(
                self.entries
                    .last()
                    .is_none_or(|last| last.index + 1 == first.index)
            );
            self.entries.extend(later.entries);
        }
        if later.hard_state.is_some() {
            self.hard_state = later.hard_state;
        }
        self.must_sync |= later.must_sync;
        self.write_id = later.write_id;
        self.covers_entry = later.covers_entry;
    }
}

/// Acknowledgement that a [`PersistRequest`] is durable. Writes are acknowledged in order: an
/// acknowledgement covers every earlier write too. It names the last entry by (term, index),
/// so an entry overwritten in the meantime is never mistaken for the one written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persisted {
    pub(crate) write_id: u64,
    pub(crate) last_entry: Option<EntryId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, EntryPayload, LogIndex};

    fn write(write_id: u64, index: LogIndex, must_sync: bool) -> PersistRequest {
        let mut w = PersistRequest::new(
            None,
            vec![Entry::new(1, index, EntryPayload::Blank)],
            must_sync,
        );
        w.write_id = write_id;
        w
    }

    /// Figure 2's durability rule survives merging: a merged write must sync if either part
    /// had to (a vote or an acknowledged entry), whichever came first.
    #[test]
    fn a_merged_write_syncs_if_either_part_must() {
        for (first, second) in [(true, false), (false, true), (true, true)] {
            let mut merged = write(1, 1, first);
            merged.merge(write(2, 2, second));
            assert!(merged.must_sync, "{first} + {second}");
            assert_eq!(merged.entries.len(), 2);
            assert_eq!(merged.done().write_id, 2, "acknowledges both");
        }
        let mut merged = write(1, 1, false);
        merged.merge(write(2, 2, false));
        assert!(!merged.must_sync);
    }
}
