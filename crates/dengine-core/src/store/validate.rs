//! The rules every [`LogStore`](super::LogStore) checks before it writes or reads, stated
//! once so that the in-memory store and every backend refuse the same requests with the same
//! words.

use super::error::StorageError;
use super::persist::PersistRequest;
use crate::types::{EntryId, LogIndex, SnapshotMeta, Term};

/// Checks a [`PersistRequest`] against the current log bounds, as every backend must before it
/// writes anything. `compacted` is the index of the last purged entry (`first_index - 1`).
pub fn validate_persist(
    req: &PersistRequest,
    compacted: LogIndex,
    last_index: LogIndex,
) -> Result<(), StorageError> {
    let Some(first) = req.entries.first() else {
        return Ok(());
    };
    if first.index <= compacted {
        return Err(StorageError::InvalidArgument(format!(
            "cannot write at index {}: entries up to {compacted} are compacted",
            first.index
        )));
    }
    if first.index > last_index.saturating_add(1) {
        return Err(StorageError::InvalidArgument(format!(
            "cannot write at index {}: the log ends at {last_index}, this would leave a gap",
            first.index
        )));
    }
    for (expected, entry) in (first.index..).zip(&req.entries) {
        if entry.index != expected {
            return Err(StorageError::InvalidArgument(format!(
                "entries are not consecutive: expected index {expected}, found {}",
                entry.index
            )));
        }
    }
    Ok(())
}

/// Checks a read range against the log bounds: the shared rules of
/// [`LogStore::read_entries`](super::LogStore::read_entries) and
/// [`LogReader::entries`](super::LogReader::entries).
pub fn validate_range(
    low: LogIndex,
    high: LogIndex,
    first_index: LogIndex,
    last_index: LogIndex,
) -> Result<(), StorageError> {
    if low > high {
        return Err(StorageError::InvalidArgument(format!(
            "inverted range [{low}, {high})"
        )));
    }
    if low < first_index {
        return Err(StorageError::Compacted {
            index: low,
            first_index,
        });
    }
    if high > last_index.saturating_add(1) {
        return Err(StorageError::Unavailable {
            index: high - 1,
            last_index,
        });
    }
    Ok(())
}

/// Checks a snapshot against the log bounds before
/// [`LogStore::save_snapshot_meta`](super::LogStore::save_snapshot_meta) (`reset == false`) or
/// [`LogStore::reset_to_snapshot`](super::LogStore::reset_to_snapshot) (`reset == true`). `term_at` is the
/// stored term at `meta.last_included.index`, if the log holds that index.
pub fn validate_snapshot(
    meta: &SnapshotMeta,
    compacted: EntryId,
    term_at: Option<Term>,
    reset: bool,
) -> Result<(), StorageError> {
    let at = meta.last_included;
    if at.index < compacted.index {
        return Err(StorageError::InvalidArgument(format!(
            "snapshot at {at} is older than the compaction point {compacted}"
        )));
    }
    let matches = at == compacted || term_at == Some(at.term);
    if !reset && !matches {
        return Err(StorageError::InvalidArgument(format!(
            "snapshot at {at} does not match the log (term there: {term_at:?}); a snapshot \
             from the leader is installed with reset_to_snapshot"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusals name the exact index at fault, for the error message a user reads.
    #[test]
    fn range_errors_name_the_index_at_fault() {
        assert!(validate_range(2, 4, 2, 3).is_ok());
        assert!(matches!(
            validate_range(1, 3, 2, 5),
            Err(StorageError::Compacted {
                index: 1,
                first_index: 2
            })
        ));
        assert!(matches!(
            validate_range(2, 7, 2, 3),
            Err(StorageError::Unavailable {
                index: 6,
                last_index: 3
            })
        ));
        assert!(matches!(
            validate_range(4, 3, 1, 9),
            Err(StorageError::InvalidArgument(_))
        ));
    }
}
