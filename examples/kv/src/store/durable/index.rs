//! [`PastIndex`]: where each key's kept past versions are in the `past` table, in memory, in
//! step with the open transaction, and built from the table when the file is opened.
//!
//! Every put looks its key up here (to note the version it replaced) and so does every
//! version a compaction drops. As an ordered map of 10,000 keys this lookup was about 4% of
//! the servers' CPU at 256 clients (docs/benchmarks.md, 2026-12-06 12:20): a descent of a
//! B-tree whose every comparison reads a key through a pointer. A hash map finds a key with
//! one hash and one comparison.
//!
//! Key order is needed only by a range read at a past revision, for the keys in the range
//! that are not live but were at that revision — deleted since, with their last versions
//! kept here; the live ones it finds in the `keys` table. So only the keys that may not be
//! live are also kept in order ([`PastIndex::maybe_dead`]): a key is put there when it is
//! removed while it has kept versions, or when its first kept version is the one its removal
//! replaced, and leaves when its last kept version is dropped. Most keys with kept versions
//! are live (a put keeps the version it replaces), so a put and a compaction touch only the
//! hash map. The set may also hold live keys (a key deleted and then put again, and every key
//! read from the file or restored from a snapshot, whose liveness is not looked up): the
//! caller merges it with the live keys, so an extra key costs a comparison and nothing else.
//!
//! (A hash map beside an ordered set of every key with kept versions was measured on
//! 2026-12-05 and not kept: a key that loses its last kept version and gains one again, about
//! a third of the puts at 256 clients, left and entered the set.)
//!
//! Keys come from clients: the map uses the standard library's keyed hash (SipHash with a
//! random key per map), so they cannot be chosen to collide.

use std::collections::{BTreeSet, HashMap, VecDeque};

use bytes::Bytes;

use crate::key_range::KeyBounds;

/// The kept past versions of one key.
#[derive(Debug, PartialEq, Eq)]
struct KeyPast {
    /// (mod revision, replaced at) of each, oldest first (the order they were replaced in,
    /// which is also their mod revisions' order).
    versions: VecDeque<(i64, i64)>,
    /// The key is in [`PastIndex::maybe_dead`].
    maybe_dead: bool,
}

/// Where each key's kept past versions are (see the module docs).
#[derive(Debug, Default)]
pub(super) struct PastIndex {
    /// Per key with kept versions, those versions.
    by_key: HashMap<Bytes, KeyPast>,
    /// In key order, every key of `by_key` that may not be live, and possibly some that
    /// are.
    maybe_dead: BTreeSet<Bytes>,
    /// The key removed last, if it had no kept versions then: the next version noted, if it
    /// is this key's, is the one its removal replaced.
    removed: Option<Bytes>,
    /// Number of kept versions.
    count: u64,
}

impl PastIndex {
    /// Notes a version of `key` at `mod_revision`, replaced at `superseded_at`, newer than
    /// every version of `key` noted before, by a put or a removal of `key` (a removal notes
    /// [`removed`](Self::removed) first).
    pub(super) fn push(&mut self, key: &[u8], mod_revision: i64, superseded_at: i64) {
        let removed = self.removed.take().is_some_and(|r| r == key);
        self.note(key, mod_revision, superseded_at, removed);
    }

    /// Notes a version read from the file or restored from a snapshot (whether its key is
    /// live is not known here), as [`push`](Self::push) does.
    pub(super) fn push_read(&mut self, key: &[u8], mod_revision: i64, superseded_at: i64) {
        self.note(key, mod_revision, superseded_at, true);
    }

    fn note(&mut self, key: &[u8], mod_revision: i64, superseded_at: i64, maybe_dead: bool) {
        self.count += 1;
        if let Some(past) = self.by_key.get_mut(key) {
            past.versions.push_back((mod_revision, superseded_at));
            if maybe_dead && !past.maybe_dead {
                past.maybe_dead = true;
                self.maybe_dead.insert(Bytes::copy_from_slice(key));
            }
            return;
        }
        // A copy: the caller's key may share a much larger buffer (the request's).
        let owned = Bytes::copy_from_slice(key);
        if maybe_dead {
            self.maybe_dead.insert(owned.clone());
        }
        self.by_key.insert(
            owned,
            KeyPast {
                versions: VecDeque::from([(mod_revision, superseded_at)]),
                maybe_dead,
            },
        );
    }

    /// `key`, which was live, was removed: it is not live now.
    pub(super) fn removed(&mut self, key: &[u8]) {
        match self.by_key.get_mut(key) {
            Some(past) => {
                self.removed = None;
                if !past.maybe_dead {
                    past.maybe_dead = true;
                    self.maybe_dead.insert(Bytes::copy_from_slice(key));
                }
            }
            None => self.removed = Some(Bytes::copy_from_slice(key)),
        }
    }

    /// Forgets the oldest version of `key`, which must be the one at `mod_revision`; false
    /// (and nothing forgotten) if it is not.
    pub(super) fn pop_oldest(&mut self, key: &[u8], mod_revision: i64) -> bool {
        let Some(past) = self.by_key.get_mut(key) else {
            return false;
        };
        if past.versions.front().map(|(m, _)| *m) != Some(mod_revision) {
            return false;
        }
        past.versions.pop_front();
        self.count -= 1;
        if past.versions.is_empty() {
            if past.maybe_dead {
                self.maybe_dead.remove(key);
            }
            self.by_key.remove(key);
        }
        true
    }

    /// (mod revision, replaced at) of each kept version of `key`, oldest first.
    pub(super) fn versions(&self, key: &[u8]) -> Option<&VecDeque<(i64, i64)>> {
        self.by_key.get(key).map(|p| &p.versions)
    }

    /// In key order, every key within `bounds` that has kept versions and may not be live,
    /// and possibly some live ones (see the module docs).
    pub(super) fn maybe_dead<'a>(
        &'a self,
        bounds: KeyBounds<'a>,
    ) -> impl Iterator<Item = &'a Bytes> + 'a {
        self.maybe_dead.range::<[u8], _>(bounds)
    }

    /// Number of kept versions.
    pub(super) fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use super::*;

    fn dead(index: &PastIndex) -> Vec<&[u8]> {
        index
            .maybe_dead((Bound::Unbounded, Bound::Unbounded))
            .map(|k| k.as_ref())
            .collect()
    }

    #[test]
    fn a_key_kept_by_puts_alone_is_not_in_key_order() {
        let mut index = PastIndex::default();
        index.push(b"a", 1, 2);
        index.push(b"a", 2, 3);
        assert_eq!(dead(&index), Vec::<&[u8]>::new());
        assert_eq!(
            index.versions(b"a"),
            Some(&VecDeque::from([(1, 2), (2, 3)]))
        );
        assert_eq!(index.count(), 2);
    }

    #[test]
    fn a_removed_key_is_in_key_order_until_its_last_version_is_dropped() {
        // Removed while it had kept versions.
        let mut index = PastIndex::default();
        index.push(b"b", 1, 2);
        index.removed(b"b");
        index.push(b"b", 2, 3);
        // Removed when it had none: the version its removal replaced comes next.
        index.removed(b"a");
        index.push(b"a", 4, 5);
        assert_eq!(dead(&index), [b"a".as_slice(), b"b"]);
        assert!(index.pop_oldest(b"b", 1));
        assert_eq!(dead(&index), [b"a".as_slice(), b"b"]);
        assert!(index.pop_oldest(b"b", 2));
        assert!(index.pop_oldest(b"a", 4));
        assert_eq!(dead(&index), Vec::<&[u8]>::new());
        assert_eq!((index.count(), index.versions(b"a")), (0, None));
    }

    #[test]
    fn a_removal_that_kept_nothing_marks_no_other_key() {
        // A key written and removed in one transaction keeps no version: the next version
        // noted is another key's, replaced by a put.
        let mut index = PastIndex::default();
        index.removed(b"new");
        index.push(b"other", 1, 3);
        index.push(b"new", 2, 4);
        assert_eq!(dead(&index), Vec::<&[u8]>::new());
    }

    #[test]
    fn versions_read_from_the_file_are_in_key_order() {
        let mut index = PastIndex::default();
        index.push_read(b"z", 1, 2);
        index.push_read(b"y", 3, 4);
        index.push(b"z", 2, 5);
        assert_eq!(dead(&index), [b"y".as_slice(), b"z"]);
        let from_y = (
            Bound::Included(b"y".as_slice()),
            Bound::Excluded(b"z".as_slice()),
        );
        let some: Vec<_> = index.maybe_dead(from_y).collect();
        assert_eq!(some, [&Bytes::from_static(b"y")]);
    }

    #[test]
    fn only_the_oldest_version_is_dropped() {
        let mut index = PastIndex::default();
        index.push(b"a", 1, 2);
        index.push(b"a", 2, 3);
        assert!(!index.pop_oldest(b"a", 2));
        assert!(!index.pop_oldest(b"b", 1));
        assert_eq!(index.count(), 2);
    }
}
