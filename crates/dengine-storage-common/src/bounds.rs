//! [`Bounds`]: the shape of a stored log (compaction point and last index), which a backend
//! keeps in memory so that `first_index`/`last_index` need no database read, with the rules
//! every write and read checks against it and the shape each write leaves behind. The
//! key-value backends (redb, sled) keep one behind a lock; the in-memory store and the WAL
//! keep the same two numbers in their own structures.

use std::path::Path;

use dengine_core::store::{validate_persist, validate_range, validate_snapshot};
use dengine_core::{
    EntryId, HardState, LogIndex, PersistRequest, SnapshotMeta, StorageError, StoredState, Term,
};

/// The log is `compacted.index + 1 ..= last_index`; the term of `compacted` (the last purged
/// entry, [`EntryId::ZERO`] if none) still answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// The last purged entry (`EntryId::ZERO` for a log never compacted).
    pub compacted: EntryId,
    /// The last stored entry's index (`compacted.index` when the log is empty).
    pub last_index: LogIndex,
}

impl Bounds {
    /// An empty log that was never compacted.
    pub const EMPTY: Bounds = Bounds {
        compacted: EntryId::ZERO,
        last_index: 0,
    };

    /// The bounds of a stored log, from its compaction point and the `(first, last, count)` of
    /// the entries found in `path` (`None` if there are none). A log with a hole, or one that
    /// does not start right after the compaction point, is refused as
    /// [`StorageError::CorruptMetadata`] rather than served.
    pub fn from_stored(
        path: &Path,
        compacted: EntryId,
        entries: Option<(LogIndex, LogIndex, u64)>,
    ) -> Result<Bounds, StorageError> {
        let Some((first, last, count)) = entries else {
            return Ok(Bounds {
                compacted,
                last_index: compacted.index,
            });
        };
        if first != compacted.index + 1 || last.checked_sub(first).map(|d| d + 1) != Some(count) {
            return Err(StorageError::CorruptMetadata {
                path: path.to_path_buf(),
                record: "entries",
                detail: format!(
                    "the log is not contiguous after the compaction point {}: {count} entries \
                     stored from {first} to {last}",
                    compacted.index
                ),
            });
        }
        Ok(Bounds {
            compacted,
            last_index: last,
        })
    }

    /// Index of the first stored entry.
    pub fn first_index(&self) -> LogIndex {
        self.compacted.index + 1
    }

    /// Whether the entry at `index` is stored (not compacted, not past the end).
    pub fn holds(&self, index: LogIndex) -> bool {
        index > self.compacted.index && index <= self.last_index
    }

    /// Checks a read of `[low, high)` ([`validate_range`]).
    pub fn check_read(&self, low: LogIndex, high: LogIndex) -> Result<(), StorageError> {
        validate_range(low, high, self.first_index(), self.last_index)
    }

    /// Checks `req` ([`validate_persist`]) and returns the bounds once it is written.
    pub fn after_persist(&self, req: &PersistRequest) -> Result<Bounds, StorageError> {
        validate_persist(req, self.compacted.index, self.last_index)?;
        Ok(Bounds {
            last_index: req.entries.last().map_or(self.last_index, |e| e.index),
            ..*self
        })
    }

    /// Where a purge up to `up_to` really cuts: past the end it purges the whole log (the
    /// runtime may pass a purge point from a snapshot that covers more than this log holds);
    /// `None` if everything up to there is purged already.
    pub fn purge_point(&self, up_to: LogIndex) -> Option<LogIndex> {
        let up_to = up_to.min(self.last_index);
        (up_to > self.compacted.index).then_some(up_to)
    }

    /// Checks a snapshot ([`validate_snapshot`]) and returns the bounds once it is recorded:
    /// unchanged for a local snapshot, an empty log right after it for a reset. `term_at`
    /// reads a stored term; it is asked only for an index these bounds hold.
    pub fn after_snapshot(
        &self,
        meta: &SnapshotMeta,
        reset: bool,
        term_at: impl FnOnce(LogIndex) -> Result<Term, StorageError>,
    ) -> Result<Bounds, StorageError> {
        let at = meta.last_included;
        let stored = if self.holds(at.index) {
            Some(term_at(at.index)?)
        } else {
            None
        };
        validate_snapshot(meta, self.compacted, stored, reset)?;
        Ok(if reset {
            Bounds {
                compacted: at,
                last_index: at.index,
            }
        } else {
            *self
        })
    }

    /// What [`LogStore::load_state`](dengine_core::LogStore::load_state) answers for a log of
    /// these bounds with the saved hard state (the default if none was saved) and snapshot
    /// description.
    pub fn stored_state(
        &self,
        hard_state: Option<HardState>,
        snapshot_meta: Option<SnapshotMeta>,
    ) -> StoredState {
        StoredState {
            hard_state: hard_state.unwrap_or_default(),
            first_index: self.first_index(),
            last_index: self.last_index,
            snapshot_meta,
        }
    }

    /// The error for an entry these bounds promised but the database no longer holds: a
    /// truncation or purge that ran concurrently with a read that does not lock out writers.
    pub fn vanished(&self, index: LogIndex) -> StorageError {
        StorageError::Unavailable {
            index,
            last_index: self.last_index,
        }
    }
}

/// The error for a database engine's failure while doing `op` on `path`
/// ([`StorageError::Backend`], the engine's message as the detail), for `map_err`.
pub fn engine_error<'a, E: std::fmt::Display>(
    path: &'a Path,
    op: &'static str,
) -> impl Fn(E) -> StorageError + 'a {
    move |e| StorageError::Backend {
        path: path.to_path_buf(),
        op,
        detail: e.to_string(),
    }
}

/// The error for an operating-system failure while doing `op` on `path`
/// ([`StorageError::Io`]), for `map_err`.
pub fn io_error<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl Fn(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        op,
        source: source.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_core::{Entry, EntryPayload, Membership};

    #[test]
    fn stored_logs_with_holes_are_refused() {
        let path = Path::new("/data/log");
        let at = EntryId::new(2, 10);
        let ok = Bounds::from_stored(path, at, Some((11, 15, 5))).unwrap();
        assert_eq!((ok.first_index(), ok.last_index), (11, 15));
        assert_eq!(Bounds::from_stored(path, at, None).unwrap().last_index, 10);
        for bad in [(11, 15, 4), (12, 15, 4), (11, 9, 0)] {
            let err = Bounds::from_stored(path, at, Some(bad)).unwrap_err();
            assert!(err.to_string().contains("not contiguous"), "{err}");
        }
    }

    #[test]
    fn writes_leave_the_bounds_the_contract_says() {
        let b = Bounds {
            compacted: EntryId::new(1, 4),
            last_index: 9,
        };
        let blank = |i| Entry::new(2, i, EntryPayload::Blank);
        let req = PersistRequest::new(None, vec![blank(7), blank(8)], true);
        assert_eq!(b.after_persist(&req).unwrap().last_index, 8);
        let gap = PersistRequest::new(None, vec![blank(11)], true);
        assert!(b.after_persist(&gap).is_err());
        assert_eq!(b.purge_point(100), Some(9));
        assert_eq!(b.purge_point(3), None);
        let meta = SnapshotMeta {
            last_included: EntryId::new(3, 20),
            membership: Membership::new([1]),
        };
        let unused = |_| -> Result<Term, StorageError> { unreachable!("index 20 is not stored") };
        let reset = b.after_snapshot(&meta, true, unused).unwrap();
        assert_eq!((reset.first_index(), reset.last_index), (21, 20));
        assert!(b.after_snapshot(&meta, false, unused).is_err());
        let local = SnapshotMeta {
            last_included: EntryId::new(2, 7),
            ..meta
        };
        assert_eq!(b.after_snapshot(&local, false, |_| Ok(2)).unwrap(), b);
        assert!(b.after_snapshot(&local, false, |_| Ok(1)).is_err());
        assert!(b.holds(5) && b.holds(9) && !b.holds(4) && !b.holds(10));
    }
}
