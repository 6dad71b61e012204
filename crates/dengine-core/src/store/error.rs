//! [`StorageError`]: the one error type of the storage contracts, spoken by the core's
//! [`LogReader`](super::LogReader) (and so by [`Ready::storage_errors`](crate::Ready)), by
//! every [`LogStore`](super::LogStore) and [`StateMachine`](super::StateMachine), and by the
//! backends.
//!
//! It is `Clone`, because a [`Ready`](crate::Ready) may carry it to several places; the I/O
//! variant shares its [`io::Error`] through an [`Arc`] rather than flattening it to text, so
//! [`std::error::Error::source`] and [`io::Error::kind`] stay available.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::types::LogIndex;

/// Why a storage operation failed. Every variant names what and where, so an operator can act
/// on the message alone.
///
/// Two variants say only that an index lies outside the log ([`Compacted`](Self::Compacted),
/// [`Unavailable`](Self::Unavailable)): the core expects them (a follower behind the
/// compaction point gets a snapshot instead) and [`is_out_of_range`](Self::is_out_of_range)
/// tells them apart. Every other variant means the store failed or holds damaged data, and
/// fails again on every retry: a runtime stops the node on it rather than logging it in a loop.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A stored log entry failed its checksum or could not be decoded.
    #[error("corrupt log entry at index {index} in {path}: {detail}")]
    Corrupt {
        /// The file or database that holds the entry.
        path: PathBuf,
        /// The index of the entry.
        index: LogIndex,
        /// What exactly is wrong.
        detail: String,
    },
    /// A stored metadata record (hard state, compaction point, snapshot meta, marker) failed
    /// its checksum or could not be decoded.
    #[error("corrupt {record} record in {path}: {detail}")]
    CorruptMetadata {
        /// The file or database that holds the record.
        path: PathBuf,
        /// Which record.
        record: &'static str,
        /// What exactly is wrong.
        detail: String,
    },
    /// The operating system refused or failed an operation.
    #[error("I/O error while {op} {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What was being done ("opening", "writing the marker of", ...).
        op: &'static str,
        /// The underlying error (shared, so that the error can be cloned; build it with
        /// `io_error.into()`).
        source: Arc<io::Error>,
    },
    /// The data was written by another backend or a format version this build cannot read.
    #[error(
        "{path} holds a store of format {found:?}, but this backend reads {expected:?}; \
         open it with the backend and version that wrote it"
    )]
    FormatMismatch {
        /// The marker file or database.
        path: PathBuf,
        /// The backend and version found there.
        found: String,
        /// The backend and version this build expects.
        expected: String,
    },
    /// There is no store at the given location (it was never created, or it was deleted).
    #[error(
        "no dengine store at {path}: it does not exist; create it explicitly if it is meant to be new"
    )]
    NotFound {
        /// The location asked for.
        path: PathBuf,
    },
    /// The database engine underneath failed.
    #[error("database error while {op} {path}: {detail}")]
    Backend {
        /// The database file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The engine's own message.
        detail: String,
    },
    /// The caller asked for something the contract does not allow (a gap in the log, a
    /// truncation below the compaction point, an inverted range).
    #[error("invalid storage request: {0}")]
    InvalidArgument(String),
    /// What is stored contradicts itself: the log was compacted past every snapshot that
    /// covers it, so entries a follower needs exist nowhere on this node.
    #[error("stored state is inconsistent: {0}")]
    Inconsistent(String),
    /// The index lies at or before the compaction point.
    #[error("log index {index} is compacted; the log now starts at {first_index}")]
    Compacted {
        /// The index asked for.
        index: LogIndex,
        /// The first index still stored.
        first_index: LogIndex,
    },
    /// The index lies after the last stored entry.
    #[error("log index {index} is not available; the log ends at {last_index}")]
    Unavailable {
        /// The index asked for.
        index: LogIndex,
        /// The last index stored.
        last_index: LogIndex,
    },
}

impl StorageError {
    /// Whether the error only says that an index lies outside the log
    /// ([`Compacted`](Self::Compacted) or [`Unavailable`](Self::Unavailable)): expected while
    /// the log is compacted or truncated under a reader, and not a fault of the store. Every
    /// other error means the store failed or is damaged.
    pub fn is_out_of_range(&self) -> bool {
        matches!(self, Self::Compacted { .. } | Self::Unavailable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_keep_the_io_error_and_its_kind() {
        let err = StorageError::Io {
            path: PathBuf::from("/data/log"),
            op: "opening",
            source: io::Error::new(io::ErrorKind::PermissionDenied, "denied").into(),
        };
        let copy = err.clone();
        assert_eq!(copy.to_string(), err.to_string());
        let source = std::error::Error::source(&copy).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("denied"));
        assert!(matches!(copy, StorageError::Io { source, .. }
            if source.kind() == io::ErrorKind::PermissionDenied));
        assert!(!err.is_out_of_range());
        assert!(
            StorageError::Compacted {
                index: 1,
                first_index: 2
            }
            .is_out_of_range()
        );
    }
}
