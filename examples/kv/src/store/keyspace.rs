//! [`Keyspace`]: where a [`KvStore`](super::KvStore) keeps its keys and their past versions —
//! in memory ([`MemoryKeyspace`]) or on disk (`durable.rs`). The store's rules (revisions,
//! ranges, transactions, compaction) are written once, over this trait.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;

use bytes::Bytes;

use super::record::{KeyRecord, PastVersion, le_word};
use crate::key_range::KeyBounds;

/// The keys of a store and the versions they replaced.
///
/// Reads never fail: a keyspace on disk that hits an I/O error records it, answers as if the
/// data were absent, and reports the error from [`take_error`](Keyspace::take_error), which
/// the state machine checks after every batch and query (and then discards the answer and
/// stops the member).
pub(crate) trait Keyspace: Debug + Send + Sync {
    /// The current record of `key`.
    fn get(&self, key: &[u8]) -> Option<KeyRecord>;

    /// The live keys within `bounds`, in key order.
    fn live<'a>(
        &'a self,
        bounds: KeyBounds<'a>,
    ) -> Box<dyn Iterator<Item = (Bytes, KeyRecord)> + 'a>;

    /// In key order, every key within `bounds` that has kept past versions and is not live;
    /// a keyspace may yield live keys with kept versions too (the caller merges these keys
    /// with the live ones). The durable keyspace keeps only the keys that may not be live in
    /// key order, so that a put does not touch an ordered set (`durable/index.rs`).
    fn dead_keys_with_history<'a>(
        &'a self,
        bounds: KeyBounds<'a>,
    ) -> Box<dyn Iterator<Item = Bytes> + 'a>;

    /// The kept past versions of `key`, oldest first.
    fn history(&self, key: &[u8]) -> Vec<PastVersion>;

    /// Every kept past version, in the order they were replaced.
    fn past_in_order(&self) -> Box<dyn Iterator<Item = (Bytes, PastVersion)> + '_>;

    /// Number of live keys.
    fn live_count(&self) -> u64;

    /// Number of kept past versions.
    fn past_count(&self) -> u64;

    /// Sets the current record of `key`.
    fn insert(&mut self, key: Bytes, record: KeyRecord);

    /// Sets the current record of `key` to what `make` builds from the one it replaces (if
    /// any), and returns that one: a [`get`](Keyspace::get) and an
    /// [`insert`](Keyspace::insert) in one, which a keyspace can do with one lookup of the key
    /// (a put is the most common write, and on disk each lookup is a descent of a B-tree).
    fn replace(
        &mut self,
        key: Bytes,
        make: &mut dyn FnMut(Option<&KeyRecord>) -> KeyRecord,
    ) -> Option<KeyRecord> {
        let prev = self.get(&key);
        let record = make(prev.as_ref());
        self.insert(key, record);
        prev
    }

    /// Removes `key`, returning its record.
    fn remove(&mut self, key: &[u8]) -> Option<KeyRecord>;

    /// Keeps a replaced version of `key`; `past.superseded_at` is at or after every earlier
    /// one's.
    fn push_past(&mut self, key: Bytes, past: PastVersion);

    /// Keeps a past version restored from a snapshot, whose key may be live or not (the
    /// keyspace was not told of its removal); as [`push_past`](Keyspace::push_past)
    /// otherwise.
    fn push_restored_past(&mut self, key: Bytes, past: PastVersion) {
        self.push_past(key, past);
    }

    /// Drops every past version replaced at or before `revision`; calls `dropped` with each.
    fn drop_past_through(&mut self, revision: i64, dropped: &mut dyn FnMut(&[u8], &KeyRecord));

    /// Removes every key and past version.
    fn clear(&mut self);

    /// The first storage error since the last call, if any.
    fn take_error(&self) -> Option<String> {
        None
    }

    /// Where the keyspace is kept, for error messages.
    fn location(&self) -> std::path::PathBuf {
        "<memory>".into()
    }

    /// Whether the keyspace outlives the process (then the state machine starts from it).
    fn is_durable(&self) -> bool {
        false
    }

    /// Starts a batch of writes that [`commit_batch`](Keyspace::commit_batch) makes one
    /// atomic change.
    fn begin_batch(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Ends the batch, storing `state` (and `cluster`, if given) with its writes; `sync`
    /// makes it durable before returning.
    fn commit_batch(
        &mut self,
        _state: &DurableState,
        _cluster: Option<&[u8]>,
        _sync: bool,
    ) -> Result<(), String> {
        Ok(())
    }

    /// Abandons the batch: none of its writes happened.
    fn abort_batch(&mut self) {}

    /// A frozen view of every batch committed so far, readable on another thread while
    /// batches go on being applied (a snapshot written beside the applying). `None`: this
    /// keyspace has none (in memory); an `Err` is a storage error. Called between batches.
    fn freeze(&mut self) -> Option<Result<Box<dyn FrozenKeyspace>, String>> {
        None
    }
}

/// What [`Keyspace::freeze`] gives: the keys and past versions as they were, read in the
/// orders of [`Keyspace::live`] and [`Keyspace::past_in_order`].
pub(crate) trait FrozenKeyspace: Send {
    /// Calls `each` with every live key, in key order, until it fails.
    fn each_live(
        &self,
        each: &mut dyn FnMut(Bytes, KeyRecord) -> std::io::Result<()>,
    ) -> std::io::Result<()>;

    /// Calls `each` with every kept past version, in the order they were replaced, until it
    /// fails.
    fn each_past(
        &self,
        each: &mut dyn FnMut(Bytes, PastVersion) -> std::io::Result<()>,
    ) -> std::io::Result<()>;
}

/// What a durable keyspace's state covers, written with every batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DurableState {
    /// The last log index applied.
    pub(crate) applied: u64,
    /// The store revision.
    pub(crate) revision: i64,
    /// The last compaction revision.
    pub(crate) compact_revision: i64,
    /// The store's size estimate.
    pub(crate) size_bytes: u64,
}

impl DurableState {
    pub(super) fn encode(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[..8].copy_from_slice(&self.applied.to_le_bytes());
        out[8..16].copy_from_slice(&self.revision.to_le_bytes());
        out[16..24].copy_from_slice(&self.compact_revision.to_le_bytes());
        out[24..].copy_from_slice(&self.size_bytes.to_le_bytes());
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 32 {
            return None;
        }
        let word = |i: usize| le_word(bytes, i);
        Some(DurableState {
            applied: u64::from_le_bytes(word(0)?),
            revision: i64::from_le_bytes(word(8)?),
            compact_revision: i64::from_le_bytes(word(16)?),
            size_bytes: u64::from_le_bytes(word(24)?),
        })
    }
}

/// A keyspace in memory: rebuilt from the log and snapshots on every start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemoryKeyspace {
    keys: BTreeMap<Bytes, KeyRecord>,
    /// Per key, its replaced versions, oldest first (by `superseded_at`, which is also the
    /// order of their `mod_revision`s).
    history: BTreeMap<Bytes, VecDeque<PastVersion>>,
    /// Every entry of `history` as (superseded_at, key), in the order they were replaced:
    /// compaction drops from the front, so it costs what it frees.
    replaced: VecDeque<(i64, Bytes)>,
}

impl Keyspace for MemoryKeyspace {
    fn get(&self, key: &[u8]) -> Option<KeyRecord> {
        self.keys.get(key).cloned()
    }

    fn live<'a>(
        &'a self,
        bounds: KeyBounds<'a>,
    ) -> Box<dyn Iterator<Item = (Bytes, KeyRecord)> + 'a> {
        Box::new(
            self.keys
                .range::<[u8], _>(bounds)
                .map(|(k, r)| (k.clone(), r.clone())),
        )
    }

    fn dead_keys_with_history<'a>(
        &'a self,
        bounds: KeyBounds<'a>,
    ) -> Box<dyn Iterator<Item = Bytes> + 'a> {
        // Every key with kept versions, the live ones too (allowed).
        Box::new(
            self.history
                .range::<[u8], _>(bounds)
                .map(|(k, _)| k.clone()),
        )
    }

    fn history(&self, key: &[u8]) -> Vec<PastVersion> {
        self.history
            .get(key)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn past_in_order(&self) -> Box<dyn Iterator<Item = (Bytes, PastVersion)> + '_> {
        let mut next: BTreeMap<&Bytes, usize> = BTreeMap::new();
        Box::new(self.replaced.iter().filter_map(move |(at, key)| {
            let i = next.entry(key).or_insert(0);
            let past = self.history.get(key)?.get(*i)?;
            *i += 1;
            debug_assert_eq!(past.superseded_at, *at);
            Some((key.clone(), past.clone()))
        }))
    }

    fn live_count(&self) -> u64 {
        self.keys.len() as u64
    }

    fn past_count(&self) -> u64 {
        self.replaced.len() as u64
    }

    fn insert(&mut self, key: Bytes, record: KeyRecord) {
        self.keys.insert(key, record);
    }

    fn replace(
        &mut self,
        key: Bytes,
        make: &mut dyn FnMut(Option<&KeyRecord>) -> KeyRecord,
    ) -> Option<KeyRecord> {
        match self.keys.entry(key) {
            Entry::Occupied(mut slot) => {
                let record = make(Some(slot.get()));
                Some(slot.insert(record))
            }
            Entry::Vacant(slot) => {
                slot.insert(make(None));
                None
            }
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<KeyRecord> {
        self.keys.remove(key)
    }

    fn push_past(&mut self, key: Bytes, past: PastVersion) {
        self.replaced.push_back((past.superseded_at, key.clone()));
        self.history.entry(key).or_default().push_back(past);
    }

    fn drop_past_through(&mut self, revision: i64, dropped: &mut dyn FnMut(&[u8], &KeyRecord)) {
        while let Some(at) = self.replaced.front().map(|(at, _)| *at)
            && at <= revision
        {
            let Some((_, key)) = self.replaced.pop_front() else {
                break;
            };
            let Some(versions) = self.history.get_mut(&key) else {
                continue;
            };
            if let Some(old) = versions.pop_front() {
                debug_assert_eq!(old.superseded_at, at);
                dropped(&key, &old.record);
            }
            if versions.is_empty() {
                self.history.remove(&key);
            }
        }
    }

    fn clear(&mut self) {
        *self = MemoryKeyspace::default();
    }
}
