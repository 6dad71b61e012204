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
//!
//! A slot of the map holds a short key ([`IndexKey`], up to [`INLINE_KEY`] bytes) and a key's
//! first two versions ([`Versions`]) in place: finding a key and noting or dropping its
//! version then reads the slot and nothing behind a pointer, and a key that gains its first
//! version (about a third of the puts at 256 clients, see above) allocates nothing. With the
//! key and the versions each behind a pointer (`Bytes`, `VecDeque`), those two reads missed
//! the caches on most puts: the map's lookups were about 4% of the servers' CPU at 256 clients
//! (docs/benchmarks.md, 2026-12-07 04:23).

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use bytes::Bytes;

use crate::key_range::KeyBounds;

/// The longest key an [`IndexKey`] holds in place (a longer one is on the heap): 22 bytes
/// keep the type at 24 bytes, the size of a boxed slice with its tag.
const INLINE_KEY: usize = 22;

/// A key of [`PastIndex::by_key`]: short keys in place, longer ones boxed. It hashes and
/// compares as its bytes, so the map is searched with a `&[u8]`.
enum IndexKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl IndexKey {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key);
            // At most INLINE_KEY (22), so it fits a u8.
            let len = key.len() as u8;
            IndexKey::Inline { len, bytes }
        } else {
            IndexKey::Heap(key.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            IndexKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IndexKey::Heap(b) => b,
        }
    }
}

impl Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

// As the bytes hash, which `Borrow` requires: a lookup by `&[u8]` hashes the slice.
impl Hash for IndexKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for IndexKey {}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.as_bytes().escape_ascii())
    }
}

/// (mod revision, replaced at) of each kept version of one key, oldest first (the order
/// they were replaced in, which is also their mod revisions' order). Up to two are held in
/// place; a third moves them all to a queue on the heap, and they come back in place once
/// one is left (not at two, so that a key going between two and three versions does not
/// allocate each time).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Versions {
    /// `len` (1 or 2, 0 only transiently) versions, the oldest first.
    Inline { len: u8, items: [(i64, i64); 2] },
    /// Three or more (or two, on the way back to one).
    Spilled(VecDeque<(i64, i64)>),
}

impl Versions {
    fn one(version: (i64, i64)) -> Self {
        Versions::Inline {
            len: 1,
            items: [version, (0, 0)],
        }
    }

    fn push_back(&mut self, version: (i64, i64)) {
        match self {
            Versions::Inline { len, items } if usize::from(*len) < items.len() => {
                items[usize::from(*len)] = version;
                *len += 1;
            }
            Versions::Inline { items, .. } => {
                let mut queue = VecDeque::with_capacity(4);
                queue.extend(items.iter().copied());
                queue.push_back(version);
                *self = Versions::Spilled(queue);
            }
            Versions::Spilled(queue) => queue.push_back(version),
        }
    }

    fn pop_front(&mut self) {
        match self {
            Versions::Inline { len, items } => {
                if *len > 0 {
                    items[0] = items[1];
                    *len -= 1;
                }
            }
            Versions::Spilled(queue) => {
                queue.pop_front();
                if let (1, Some(&last)) = (queue.len(), queue.front()) {
                    *self = Versions::one(last);
                }
            }
        }
    }

    fn front(&self) -> Option<(i64, i64)> {
        self.iter().next().copied()
    }

    /// Number of versions.
    pub(super) fn len(&self) -> usize {
        match self {
            Versions::Inline { len, .. } => usize::from(*len),
            Versions::Spilled(queue) => queue.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The versions, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &(i64, i64)> + '_ {
        let (inline, queue): (&[(i64, i64)], _) = match self {
            Versions::Inline { len, items } => (&items[..usize::from(*len)], None),
            Versions::Spilled(queue) => (&[], Some(queue)),
        };
        inline.iter().chain(queue.into_iter().flatten())
    }
}

/// The kept past versions of one key.
#[derive(Debug, PartialEq, Eq)]
struct KeyPast {
    versions: Versions,
    /// The key is in [`PastIndex::maybe_dead`].
    maybe_dead: bool,
}

/// Where each key's kept past versions are (see the module docs).
#[derive(Debug, Default)]
pub(super) struct PastIndex {
    /// Per key with kept versions, those versions.
    by_key: HashMap<IndexKey, KeyPast>,
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
        if maybe_dead {
            // A copy: the caller's key may share a much larger buffer (the request's).
            self.maybe_dead.insert(Bytes::copy_from_slice(key));
        }
        self.by_key.insert(
            IndexKey::new(key),
            KeyPast {
                versions: Versions::one((mod_revision, superseded_at)),
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
        if past.versions.front().map(|(m, _)| m) != Some(mod_revision) {
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
    pub(super) fn versions(&self, key: &[u8]) -> Option<&Versions> {
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

    fn versions(index: &PastIndex, key: &[u8]) -> Option<Vec<(i64, i64)>> {
        index.versions(key).map(|v| v.iter().copied().collect())
    }

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
        assert_eq!(versions(&index, b"a"), Some(vec![(1, 2), (2, 3)]));
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
        assert_eq!((index.count(), versions(&index, b"a")), (0, None));
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

    #[test]
    fn versions_move_to_the_heap_at_three_and_back_at_one_in_order() {
        // Against a plain queue, through random pushes and pops that take the count up
        // and down across the move both ways.
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut versions = Versions::one((1, 2));
        let mut model = VecDeque::from([(1, 2)]);
        let (mut spilled, mut back_inline) = (0, 0);
        for i in 3..5_000 {
            let was_spilled = matches!(versions, Versions::Spilled(_));
            if model.is_empty() || next() % 2 == 0 {
                versions.push_back((i, i + 1));
                model.push_back((i, i + 1));
            } else {
                versions.pop_front();
                model.pop_front();
            }
            let now_spilled = matches!(versions, Versions::Spilled(_));
            spilled += usize::from(!was_spilled && now_spilled);
            back_inline += usize::from(was_spilled && !now_spilled);
            assert_eq!(
                now_spilled,
                model.len() >= 3 || (was_spilled && model.len() == 2)
            );
            assert_eq!(versions.len(), model.len());
            assert_eq!(versions.is_empty(), model.is_empty());
            assert_eq!(versions.front(), model.front().copied());
            assert!(versions.iter().eq(model.iter()), "step {i}");
        }
        assert!(spilled > 10 && back_inline > 10, "{spilled} {back_inline}");
    }

    #[test]
    fn short_keys_are_held_in_place_and_long_ones_found_as_well() {
        assert_eq!(std::mem::size_of::<IndexKey>(), 24);
        let long = [b'k'; INLINE_KEY + 1];
        let exact = [b'e'; INLINE_KEY];
        let mut index = PastIndex::default();
        for (i, key) in [&b""[..], b"a", &exact, &long].into_iter().enumerate() {
            let i = i as i64;
            index.push(key, i, i + 10);
        }
        assert!(matches!(IndexKey::new(&exact), IndexKey::Inline { .. }));
        assert!(matches!(IndexKey::new(&long), IndexKey::Heap(_)));
        assert_eq!(versions(&index, &long), Some(vec![(3, 13)]));
        assert_eq!(versions(&index, &exact), Some(vec![(2, 12)]));
        assert_eq!(versions(&index, b""), Some(vec![(0, 10)]));
        // A prefix of an inline key is another key.
        assert_eq!(versions(&index, &exact[..INLINE_KEY - 1]), None);
        assert!(index.pop_oldest(&long, 3));
        assert_eq!((versions(&index, &long), index.count()), (None, 3));
    }
}
