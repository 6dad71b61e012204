//! The records a [`Keyspace`](super::Keyspace) keeps: a key's current state and its replaced
//! versions.

use bytes::Bytes;

/// The current state of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyRecord {
    pub(crate) value: Bytes,
    pub(crate) create_revision: i64,
    pub(crate) mod_revision: i64,
    pub(crate) version: i64,
}

/// A version of a key that a later write replaced or deleted: it was the key's state from
/// `record.mod_revision` up to, not including, `superseded_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PastVersion {
    pub(crate) record: KeyRecord,
    pub(crate) superseded_at: i64,
}

/// The 8 bytes at `at`, if there are that many.
pub(super) fn le_word(bytes: &[u8], at: usize) -> Option<[u8; 8]> {
    bytes.get(at..at.checked_add(8)?)?.try_into().ok()
}
