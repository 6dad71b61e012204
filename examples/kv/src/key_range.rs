//! [`KeyRange`]: a set of keys as etcd requests name them (`key` and `range_end`).

use std::ops::Bound;

use bytes::Bytes;

/// A set of keys as etcd requests name them: `key` alone, `[key, range_end)`, or every key
/// `>= key` when `range_end` is `"\0"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyRange {
    /// Exactly one key.
    Single(Bytes),
    /// `start <= k < end`; `end == None` means no upper bound.
    Span { start: Bytes, end: Option<Bytes> },
}

impl KeyRange {
    /// Interprets an etcd `(key, range_end)` pair.
    pub(crate) fn new(key: &Bytes, range_end: &Bytes) -> Self {
        if range_end.is_empty() {
            KeyRange::Single(key.clone())
        } else if range_end.as_ref() == [0] {
            KeyRange::Span {
                start: key.clone(),
                end: None,
            }
        } else {
            KeyRange::Span {
                start: key.clone(),
                end: Some(range_end.clone()),
            }
        }
    }

    /// Every key (etcd's `key = "\0", range_end = "\0"`).
    pub(crate) fn all() -> Self {
        KeyRange::Span {
            start: Bytes::new(),
            end: None,
        }
    }

    /// Whether `key` belongs to the set.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_ref() == key,
            KeyRange::Span { start, end } => {
                key >= start.as_ref() && end.as_ref().is_none_or(|e| key < e.as_ref())
            }
        }
    }

    /// The bounds for a `BTreeMap::range`, or `None` if the set is empty (an inverted span,
    /// which `BTreeMap::range` would refuse).
    pub(crate) fn bounds(&self) -> Option<KeyBounds<'_>> {
        match self {
            KeyRange::Single(k) => Some((Bound::Included(k.as_ref()), Bound::Included(k.as_ref()))),
            KeyRange::Span { start, end: None } => {
                Some((Bound::Included(start.as_ref()), Bound::Unbounded))
            }
            KeyRange::Span {
                start,
                end: Some(end),
            } => (start < end).then(|| {
                (
                    Bound::Included(start.as_ref()),
                    Bound::Excluded(end.as_ref()),
                )
            }),
        }
    }
}

/// Bounds of a key range as `BTreeMap::range` takes them.
pub(crate) type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);
