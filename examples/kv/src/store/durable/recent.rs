//! [`RecentPast`]: the past versions a durable keyspace replaced since its open group began,
//! kept in memory until the group's commit writes them into the `past` table — or until a
//! compaction drops them, in which case they are never written at all.
//!
//! Every put replaces a version, and the auto-compaction (by default down to the last 10,000
//! revisions, in steps of 1,000 checked ten times a second) drops most of them well within a
//! second at high load, which is about how long a group lasts. Inserting each into the `past`
//! B-tree as it was replaced, then removing it again, was about 7% of a member's CPU at 256
//! clients (docs/benchmarks.md, 2026-12-06 08:45); kept here, a version costs a push at the
//! end of a queue, and the ones still kept when the group ends are written in one pass, in the
//! table's order.
//!
//! What is here is in no commit yet, so a crash loses it with the rest of the group's
//! batches, which the Raft log replays (see the module docs of `durable.rs`). What it holds
//! is bounded by the keyspace: past [`RECENT_BYTES`](super::RECENT_BYTES) (a group of large
//! values), the oldest versions go into the open transaction at once.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::store::record::PastVersion;

/// Past versions not written to the file yet, in the order they were replaced (see the
/// module docs). Every one was replaced after every version in the file.
#[derive(Debug, Default)]
pub(super) struct RecentPast {
    /// (key, version), oldest first: `superseded_at` never decreases along it.
    versions: VecDeque<(Bytes, PastVersion)>,
    /// The keys' and values' bytes of `versions`.
    bytes: usize,
}

/// The bytes of one kept version.
fn size(key: &Bytes, past: &PastVersion) -> usize {
    key.len() + past.record.value.len()
}

impl RecentPast {
    /// Keeps a version of `key`, replaced at or after every version kept here.
    pub(super) fn push(&mut self, key: Bytes, past: PastVersion) {
        debug_assert!(
            self.versions
                .back()
                .is_none_or(|(_, last)| last.superseded_at <= past.superseded_at),
            "past versions kept out of order"
        );
        self.bytes += size(&key, &past);
        self.versions.push_back((key, past));
    }

    /// The keys' and values' bytes of the versions kept here.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes the oldest versions off until those left hold at most `bytes`; returns them
    /// (oldest first).
    pub(super) fn split_oldest(&mut self, bytes: usize) -> RecentPast {
        self.split_front(|left, _| left > bytes)
    }

    /// Takes off every version replaced at or before `revision` (a compaction drops them);
    /// returns them (oldest first).
    pub(super) fn split_through(&mut self, revision: i64) -> RecentPast {
        self.split_front(|_, past| past.superseded_at <= revision)
    }

    /// Takes the oldest versions off while `more(bytes held, oldest)` says so.
    fn split_front(&mut self, mut more: impl FnMut(usize, &PastVersion) -> bool) -> RecentPast {
        let mut front = RecentPast::default();
        while let Some((_, oldest)) = self.versions.front()
            && more(self.bytes, oldest)
        {
            let Some((key, past)) = self.versions.pop_front() else {
                break;
            };
            self.bytes -= size(&key, &past);
            front.push(key, past);
        }
        front
    }

    /// The version of `key` replaced at `at`, if it is kept here.
    pub(super) fn get(&self, at: i64, key: &[u8]) -> Option<&PastVersion> {
        // Several keys can be replaced at one revision (a transaction, a range delete).
        let first = self.versions.partition_point(|(_, p)| p.superseded_at < at);
        self.versions
            .range(first..)
            .take_while(|(_, p)| p.superseded_at == at)
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, p)| p)
    }

    /// The versions kept here, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &(Bytes, PastVersion)> {
        self.versions.iter()
    }

    /// Takes every version kept here, leaving none.
    pub(super) fn take(&mut self) -> RecentPast {
        std::mem::take(self)
    }

    /// Forgets every version kept here (their batches were abandoned, or the keyspace
    /// cleared).
    pub(super) fn clear(&mut self) {
        self.versions.clear();
        self.bytes = 0;
    }

    /// Number of versions kept here.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.versions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::KeyRecord;

    fn past(value: &str, mod_revision: i64, superseded_at: i64) -> PastVersion {
        PastVersion {
            record: KeyRecord {
                value: Bytes::from(value.to_string()),
                create_revision: 1,
                mod_revision,
                version: 1,
            },
            superseded_at,
        }
    }

    #[test]
    fn finds_each_version_by_when_it_was_replaced_and_its_key() {
        let mut r = RecentPast::default();
        r.push(Bytes::from("a"), past("a1", 1, 3));
        // b and c replaced together at 4 (one transaction).
        r.push(Bytes::from("b"), past("b1", 2, 4));
        r.push(Bytes::from("c"), past("c1", 2, 4));
        r.push(Bytes::from("a"), past("a2", 3, 5));
        assert_eq!(r.get(3, b"a"), Some(&past("a1", 1, 3)));
        assert_eq!(r.get(4, b"b"), Some(&past("b1", 2, 4)));
        assert_eq!(r.get(4, b"c"), Some(&past("c1", 2, 4)));
        assert_eq!(r.get(5, b"a"), Some(&past("a2", 3, 5)));
        assert_eq!(r.get(4, b"a"), None);
        assert_eq!(r.get(6, b"a"), None);
        assert_eq!(r.get(2, b"a"), None);
    }

    #[test]
    fn splits_off_the_oldest_through_a_revision() {
        let mut r = RecentPast::default();
        for (i, at) in [3, 4, 4, 5, 7].into_iter().enumerate() {
            r.push(Bytes::from(format!("k{i}")), past("v", 1, at));
        }
        let seen: Vec<_> = r
            .split_through(4)
            .iter()
            .map(|(k, p)| (k.clone(), p.superseded_at))
            .collect();
        assert_eq!(
            seen,
            [
                (Bytes::from("k0"), 3),
                (Bytes::from("k1"), 4),
                (Bytes::from("k2"), 4)
            ]
        );
        assert_eq!((r.len(), r.bytes()), (2, 2 * 3));
        assert_eq!(r.split_through(4).len(), 0);
        assert_eq!(r.split_through(6).len(), 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r.get(7, b"k4").map(|p| p.superseded_at), Some(7));
        let all: Vec<_> = r.take().iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(all, [Bytes::from("k4")]);
        assert_eq!((r.len(), r.bytes()), (0, 0));
    }

    #[test]
    fn splits_off_the_oldest_until_the_rest_fits() {
        let mut r = RecentPast::default();
        for at in 1..=5 {
            // 2 + 8 bytes each.
            r.push(Bytes::from(format!("k{at}")), past("12345678", 1, at));
        }
        assert_eq!(r.bytes(), 50);
        let oldest = r.split_oldest(25);
        let taken: Vec<i64> = oldest.iter().map(|(_, p)| p.superseded_at).collect();
        assert_eq!(taken, [1, 2, 3]);
        assert_eq!((oldest.bytes(), r.bytes()), (30, 20));
        assert_eq!(r.get(4, b"k4").map(|p| p.superseded_at), Some(4));
        assert_eq!(r.get(3, b"k3"), None);
        assert_eq!(r.split_oldest(100).len(), 0);
        assert_eq!(r.split_oldest(0).len(), 2);
        assert_eq!(r.bytes(), 0);
    }
}
