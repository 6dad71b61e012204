//! The key-value data and etcd's rules for reading and changing it: the store-wide revision,
//! per-key create/mod revisions and versions, ranges, transactions and compaction.
//!
//! Pure and deterministic: no clock, no randomness, no I/O. [`KvStore`] keeps every key's
//! current value and, as etcd's MVCC store does, every version it replaced since the last
//! compaction: a read at any revision from the compaction point to the current one sees the
//! key space as it was then (see [`KvStore::check_read_revision`]).

mod durable;
mod keyspace;
mod leases;
mod record;

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::iter::Peekable;

use bytes::Bytes;

use crate::error::KvError;
use crate::key_range::{KeyBounds, KeyRange};
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};
use crate::validate::{check_delete, check_put, check_range, check_txn};

pub(crate) use durable::{DurableKeyspace, Opened};
pub(crate) use keyspace::{DurableState, FrozenKeyspace, Keyspace, MemoryKeyspace};
pub(crate) use leases::{Leases, MAX_LEASE_TTL};
pub(crate) use record::{KeyRecord, PastVersion};

/// Per-key bookkeeping added to every stored byte of key and value when estimating the size
/// of the store (revisions, version, map node).
const KEY_OVERHEAD_BYTES: u64 = 48;

/// Bytes of an encoded `KeyValue` besides its key and value (three revisions, the version and
/// the field tags), counted when bounding the size of a Range response.
const KV_RESPONSE_OVERHEAD_BYTES: usize = 40;

/// The result of a write command: the response to encode and the events it produced.
#[derive(Debug)]
pub(crate) struct WriteOutcome<R> {
    pub(crate) response: R,
    /// Events in the order they happened, all at `revision`; empty if nothing changed, or
    /// if the store does not record events ([`KvStore::record_events`]).
    pub(crate) events: Vec<Event>,
    /// The store revision after the command.
    pub(crate) revision: i64,
}

/// Every key's current value and metadata, the versions replaced since the last compaction,
/// the store revision and the compaction point.
#[derive(Debug)]
pub(crate) struct KvStore {
    /// The keys and their kept past versions: in memory, or on disk.
    data: Box<dyn Keyspace>,
    /// Incremented once by every command that changes at least one key.
    revision: i64,
    /// The last compaction revision (0: never compacted).
    compact_revision: i64,
    /// Sum over keys and kept past versions of key + value length + [`KEY_OVERHEAD_BYTES`].
    size_bytes: u64,
    /// The leases and the keys attached to them.
    leases: Leases,
    /// Whether writes make their change events ([`record_events`](Self::record_events)).
    recording: bool,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::empty(Box::new(MemoryKeyspace::default()))
    }
}

/// A snapshot's past versions did not fit the store's rules (see [`KvStore::restore`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BadHistory(pub(crate) String);

impl KvStore {
    /// An empty store at revision 0 on `data` (which must be empty).
    pub(crate) fn empty(data: Box<dyn Keyspace>) -> Self {
        KvStore {
            data,
            revision: 0,
            compact_revision: 0,
            size_bytes: 0,
            leases: Leases::default(),
            recording: true,
        }
    }

    /// A store on `data` as it was left: its revision, compaction point and size as recorded
    /// with it.
    pub(crate) fn reopen(data: Box<dyn Keyspace>, state: &DurableState) -> Self {
        KvStore {
            data,
            revision: state.revision,
            compact_revision: state.compact_revision,
            size_bytes: state.size_bytes,
            leases: Leases::default(),
            recording: true,
        }
    }

    /// Whether the writes from now on make their change events (on by default). The state
    /// machine turns it off for a batch that nobody watches (`WatchHub::pass`): building
    /// each write's events (its key-value and the one it replaced, a lease lookup, refcounts
    /// on the applied entry) only to free them at the end of the batch was about 2% of the
    /// servers' CPU at 256 clients, and turning it off cut the apply bench's CPU per put by
    /// 19% (docs/benchmarks.md, 2026-12-07 21:14). The writes are the same either way: only
    /// their [`WriteOutcome::events`] are left empty.
    pub(crate) fn record_events(&mut self, on: bool) {
        self.recording = on;
    }

    /// Whether writes make their change events ([`record_events`](Self::record_events)).
    pub(crate) fn records_events(&self) -> bool {
        self.recording
    }

    /// The leases and the keys attached to them.
    pub(crate) fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Replaces the lease table with `states` (a snapshot's or the state file's), checked
    /// against the live keys; a damaged table is refused and the old one kept.
    pub(crate) fn set_leases(
        &mut self,
        states: Vec<crate::proto::dengine::kv::v1::LeaseState>,
    ) -> Result<(), String> {
        let data = &self.data;
        self.leases = Leases::from_states(states, |key| data.get(key).map(|r| r.mod_revision))?;
        Ok(())
    }

    /// Grants lease `id` with `ttl` seconds (no key changes: the revision stays).
    pub(crate) fn grant_lease(&mut self, id: i64, ttl: i64) -> Result<(), KvError> {
        self.leases.grant(id, ttl)
    }

    /// Records lease `id`'s remaining TTL, as its leader checkpointed it.
    pub(crate) fn checkpoint_lease(&mut self, id: i64, remaining: i64) {
        self.leases.checkpoint(id, remaining);
    }

    /// Revokes lease `id`: its keys are deleted, all at one revision (none if it had no
    /// keys), and the lease is gone.
    pub(crate) fn revoke_lease(&mut self, id: i64) -> Result<WriteOutcome<()>, KvError> {
        let lease = self
            .leases
            .remove(id)
            .ok_or_else(KvError::lease_not_found)?;
        let mut w = self.begin();
        for key in &lease.keys {
            w.delete_key(key);
        }
        let (revision, events) = w.finish();
        Ok(WriteOutcome {
            response: (),
            events,
            revision,
        })
    }

    /// `to_kv` with the lease of the version, if it is the live one and attached.
    fn kv(&self, key: &Bytes, r: &KeyRecord) -> KeyValue {
        let mut kv = to_kv(key, r);
        kv.lease = self.leases.lease_of(key, r.mod_revision);
        kv
    }

    /// The keyspace.
    pub(crate) fn data(&self) -> &dyn Keyspace {
        self.data.as_ref()
    }

    /// The keyspace, to start or end a batch of writes on it.
    pub(crate) fn data_mut(&mut self) -> &mut dyn Keyspace {
        self.data.as_mut()
    }

    /// The keyspace, leaving an empty one in memory in its place.
    pub(crate) fn take_data(&mut self) -> Box<dyn Keyspace> {
        std::mem::replace(&mut self.data, Box::new(MemoryKeyspace::default()))
    }

    /// What a durable keyspace records with each batch, as of now (`applied`: the log index).
    pub(crate) fn durable_state(&self, applied: u64) -> DurableState {
        DurableState {
            applied,
            revision: self.revision,
            compact_revision: self.compact_revision,
            size_bytes: self.size_bytes,
        }
    }

    /// The current store revision.
    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }

    /// The last compaction revision.
    pub(crate) fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Number of live keys.
    pub(crate) fn key_count(&self) -> u64 {
        self.data.live_count()
    }

    /// Estimated memory held by keys and values.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Number of past versions kept (replaced or deleted since the last compaction).
    pub(crate) fn past_version_count(&self) -> u64 {
        self.data.past_count()
    }

    /// Every live key in key order.
    pub(crate) fn key_values(&self) -> impl Iterator<Item = KeyValue> + '_ {
        self.data
            .live((std::ops::Bound::Unbounded, std::ops::Bound::Unbounded))
            .map(|(k, r)| self.kv(&k, &r))
    }

    /// Every past version kept, in the order they were replaced, with the revision that
    /// replaced each.
    pub(crate) fn past_versions(&self) -> impl Iterator<Item = (KeyValue, i64)> + '_ {
        self.data
            .past_in_order()
            .map(|(key, past)| (to_kv(&key, &past.record), past.superseded_at))
    }

    /// Rebuilds a store from a snapshot's contents: the live keys, and the past versions in
    /// the order they were replaced ([`past_versions`](Self::past_versions)). Past versions
    /// that break the store's rules — replaced out of order, at or before their own
    /// revision, after the store's revision, or so old that the compaction should have
    /// dropped them — are refused: the snapshot is damaged.
    /// `data` is emptied first; a refusal gives it back with the error, as it was left.
    pub(crate) fn restore(
        mut data: Box<dyn Keyspace>,
        kvs: impl IntoIterator<Item = KeyValue>,
        past: impl IntoIterator<Item = (KeyValue, i64)>,
        revision: i64,
        compact_revision: i64,
    ) -> Result<Self, (BadHistory, Box<dyn Keyspace>)> {
        if revision < 0 || compact_revision < 0 || compact_revision > revision {
            return Err((
                BadHistory(format!(
                    "revision {revision} with compaction point {compact_revision}: the compaction \
                 point must be between 0 and the revision"
                )),
                data,
            ));
        }
        data.clear();
        let mut store = KvStore {
            revision,
            compact_revision,
            ..KvStore::empty(data)
        };
        for kv in kvs {
            store.size_bytes += record_size(&kv.key, &kv.value);
            let (key, record) = split_kv(kv);
            store.data.insert(key, record);
        }
        // The revision each key's last past version was replaced at, and every one's.
        let mut key_lasts: HashMap<Bytes, i64> = HashMap::new();
        let mut last = compact_revision;
        for (kv, superseded_at) in past {
            let (key, record) = split_kv(kv);
            let key_last = key_lasts.get(&key).copied().unwrap_or(0);
            if superseded_at <= compact_revision
                || superseded_at < last
                || superseded_at > revision
                || record.mod_revision >= superseded_at
                || record.mod_revision < key_last
            {
                return Err((
                    BadHistory(format!(
                        "past version of key {key:?} (mod revision {}) replaced at revision \
                         {superseded_at}: out of order or outside the kept history ({} to {})",
                        record.mod_revision, compact_revision, revision
                    )),
                    store.data,
                ));
            }
            last = superseded_at;
            key_lasts.insert(key.clone(), superseded_at);
            store.size_bytes += record_size(&key, &record.value);
            store.data.push_restored_past(
                key,
                PastVersion {
                    record,
                    superseded_at,
                },
            );
        }
        Ok(store)
    }

    /// The change events of every revision from `from` on, rebuilt from the history (for a
    /// watch event history after a snapshot was installed), oldest revision first. Every put
    /// and delete the history still shows is there, with its previous version as `prev_kv`;
    /// within one revision the events are in key order (the order the write made them in is
    /// not kept). Revisions at or before the compaction point are incomplete (their deletes
    /// are gone), so `from` should be after it.
    pub(crate) fn events_since(&self, from: i64) -> Vec<(i64, Vec<Event>)> {
        self.events_between(&KeyRange::all(), from, i64::MAX)
    }

    /// [`events_since`](Self::events_since) for the keys of `range` and the revisions `from`
    /// to `through` only.
    pub(crate) fn events_between(
        &self,
        range: &KeyRange,
        from: i64,
        through: i64,
    ) -> Vec<(i64, Vec<Event>)> {
        let mut by_revision: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
        let Some(bounds) = range.bounds() else {
            return Vec::new();
        };
        for key in self.keys_in(bounds) {
            let past = self.data.history(&key);
            let live = self.data.get(&key);
            let mut versions = past
                .iter()
                .map(|p| (&p.record, Some(p.superseded_at)))
                .chain(live.as_ref().map(|r| (r, None)))
                .peekable();
            let mut before: Option<(&KeyRecord, Option<i64>)> = None;
            while let Some((record, superseded_at)) = versions.next() {
                if record.mod_revision > through {
                    break;
                }
                if record.mod_revision >= from {
                    let prev = before
                        .filter(|(_, at)| *at == Some(record.mod_revision))
                        .map(|(r, _)| self.kv(&key, r));
                    by_revision
                        .entry(record.mod_revision)
                        .or_default()
                        .push(Event {
                            r#type: EventType::Put as i32,
                            kv: Some(self.kv(&key, record)),
                            prev_kv: prev,
                        });
                }
                // Replaced by a put at the same revision, or deleted then.
                if let Some(at) = superseded_at
                    && (from..=through).contains(&at)
                    && versions
                        .peek()
                        .is_none_or(|(next, _)| next.mod_revision != at)
                {
                    by_revision.entry(at).or_default().push(Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(KeyValue {
                            key: key.clone(),
                            mod_revision: at,
                            ..KeyValue::default()
                        }),
                        prev_kv: Some(self.kv(&key, record)),
                    });
                }
                before = Some((record, superseded_at));
            }
        }
        by_revision.into_iter().collect()
    }

    /// Keeps `record`, replaced at `superseded_at`, in the history.
    fn push_past(&mut self, key: Bytes, record: KeyRecord, superseded_at: i64) {
        self.size_bytes += record_size(&key, &record.value);
        self.data.push_past(
            key,
            PastVersion {
                record,
                superseded_at,
            },
        );
    }

    /// Checks the `revision` of a read (etcd's rules): 0 reads the current revision; a
    /// revision after the current one is [`KvError::FutureRevision`]; one before the
    /// compaction point is [`KvError::Compacted`]; any other is served from the history.
    pub(crate) fn check_read_revision(&self, revision: i64) -> Result<(), KvError> {
        if revision > self.revision {
            Err(KvError::FutureRevision)
        } else if revision > 0 && revision < self.compact_revision {
            Err(KvError::Compacted)
        } else {
            Ok(())
        }
    }

    /// The revision a read asking for `revision` sees (0: the current one).
    fn read_at(&self, revision: i64) -> ReadAt {
        ReadAt::of(revision, self.revision)
    }

    /// The state of `key` at past revision `at`: the current record if it was already
    /// written by then, else the kept version that was current at `at`, if any.
    fn version_at(&self, key: &Bytes, at: i64) -> Option<KeyRecord> {
        if let Some(r) = self.data.get(key)
            && r.mod_revision <= at
        {
            return Some(r);
        }
        let mut past = self.data.history(key);
        // The last version written at or before `at`; it was current at `at` unless it was
        // replaced (or deleted) by then.
        let i = past.partition_point(|p| p.record.mod_revision <= at);
        let p = past.swap_remove(i.checked_sub(1)?);
        (p.superseded_at > at).then_some(p.record)
    }

    /// The checksum of the key space as of `revision` (0: the current one; the same rules as
    /// a read's revision, [`check_read_revision`](Self::check_read_revision)): a CRC-32C over
    /// every key, in key order, with its value, create and mod revisions and version, each
    /// length-prefixed so that no two different states give the same byte stream.
    pub(crate) fn hash(&self, revision: i64) -> Result<u32, KvError> {
        self.check_read_revision(revision)?;
        let mut crc = 0u32;
        let all = KeyRange::all();
        for (key, r) in self.iter_range_at(&all, self.read_at(revision)) {
            crc = crc32c::crc32c_append(crc, &(key.len() as u64).to_le_bytes());
            crc = crc32c::crc32c_append(crc, &key);
            crc = crc32c::crc32c_append(crc, &(r.value.len() as u64).to_le_bytes());
            crc = crc32c::crc32c_append(crc, &r.value);
            for n in [r.create_revision, r.mod_revision, r.version] {
                crc = crc32c::crc32c_append(crc, &n.to_le_bytes());
            }
        }
        Ok(crc)
    }

    /// Serves a Range request at the current revision, refusing it if the keys it would
    /// collect take more than `max_bytes` (see [`range_size`](Self::range_size)).
    pub(crate) fn range(
        &self,
        req: &RangeRequest,
        max_bytes: Option<usize>,
    ) -> Result<RangeResponse, KvError> {
        check_range(req)?;
        self.check_read_revision(req.revision)?;
        let at = self.read_at(req.revision);
        if let Some(max) = max_bytes {
            self.range_size(req, at, max)?;
        }
        Ok(self.range_unchecked(req, at, self.revision))
    }

    /// The bytes of the key-values a Range collects — every key of the range that passes the
    /// filters, or only the first `limit + 1` in key order when no sort or filter needs them
    /// all — or a refusal if they take more than `max_bytes`. The count stops as soon as the
    /// bound is passed, so checking a huge range costs little; nothing is copied.
    fn range_size(
        &self,
        req: &RangeRequest,
        at: ReadAt,
        max_bytes: usize,
    ) -> Result<usize, KvError> {
        if req.count_only {
            return Ok(0);
        }
        let range = KeyRange::new(&req.key, &req.range_end);
        let plan = RangePlan::of(req);
        let collected: Box<dyn Iterator<Item = (Bytes, KeyRecord)>> =
            if plan.needs_all || plan.limit == 0 {
                Box::new(
                    self.iter_range_at(&range, at)
                        .filter(|(_, r)| passes_filters(req, r)),
                )
            } else {
                Box::new(self.iter_range_at(&range, at).take(plan.limit + 1))
            };
        let mut total = 0usize;
        for (key, record) in collected {
            let value = if req.keys_only { 0 } else { record.value.len() };
            total = total.saturating_add(key.len() + value + KV_RESPONSE_OVERHEAD_BYTES);
            if total > max_bytes {
                return Err(KvError::ResourceExhausted(format!(
                    "range response too large: the keys read would take more than {max_bytes} \
                     bytes (the member's max_range_response_bytes); read the range in pages \
                     with a limit (etcdctl get --limit N, then continue from the last key \
                     returned)"
                )));
            }
        }
        Ok(total)
    }

    fn iter_range<'a>(
        &'a self,
        range: &'a KeyRange,
    ) -> Box<dyn Iterator<Item = (Bytes, KeyRecord)> + 'a> {
        match range.bounds() {
            Some(bounds) => self.data.live(bounds),
            None => Box::new(std::iter::empty()),
        }
    }

    /// The keys of `range` as they were at `at`, in key order.
    fn iter_range_at<'a>(
        &'a self,
        range: &'a KeyRange,
        at: ReadAt,
    ) -> Box<dyn Iterator<Item = (Bytes, KeyRecord)> + 'a> {
        let ReadAt::Past(at) = at else {
            return self.iter_range(range);
        };
        let Some(bounds) = range.bounds() else {
            return Box::new(std::iter::empty());
        };
        Box::new(
            self.keys_in(bounds)
                .filter_map(move |k| self.version_at(&k, at).map(|r| (k, r))),
        )
    }

    /// Every key within `bounds` that is live or has kept past versions, in key order, once.
    fn keys_in<'a>(&'a self, bounds: KeyBounds<'a>) -> impl Iterator<Item = Bytes> + 'a {
        MergeKeys {
            a: self.data.live(bounds).map(|(k, _)| k).peekable(),
            b: self.data.dead_keys_with_history(bounds).peekable(),
        }
    }

    /// Serves a Range at `at` (checked by the caller); `header_revision` goes in the header
    /// (etcd answers a read at a past revision with the current revision).
    fn range_unchecked(
        &self,
        req: &RangeRequest,
        at: ReadAt,
        header_revision: i64,
    ) -> RangeResponse {
        let range = KeyRange::new(&req.key, &req.range_end);
        let count = self.iter_range_at(&range, at).count() as i64;
        let header = Some(header(header_revision));
        if req.count_only {
            return RangeResponse {
                header,
                kvs: Vec::new(),
                more: false,
                count,
            };
        }
        let RangePlan {
            target,
            order,
            limit,
            needs_all,
        } = RangePlan::of(req);

        let mut kvs: Vec<KeyValue> = if needs_all || limit == 0 {
            self.iter_range_at(&range, at)
                .filter(|(_, r)| passes_filters(req, r))
                .map(|(k, r)| self.kv_owned(k, r))
                .collect()
        } else {
            // Key order is the map's order: take one more than the limit to learn `more`.
            self.iter_range_at(&range, at)
                .take(limit + 1)
                .map(|(k, r)| self.kv_owned(k, r))
                .collect()
        };
        if order != SortOrder::None {
            let key_of = |kv: &KeyValue| -> SortKey {
                match target {
                    SortTarget::Key => SortKey::Bytes(kv.key.clone()),
                    SortTarget::Version => SortKey::Int(kv.version),
                    SortTarget::Create => SortKey::Int(kv.create_revision),
                    SortTarget::Mod => SortKey::Int(kv.mod_revision),
                    SortTarget::Value => SortKey::Bytes(kv.value.clone()),
                }
            };
            // Stable sorts: ties stay in key order, so the answer is deterministic.
            if order == SortOrder::Descend {
                kvs.sort_by_key(|kv| std::cmp::Reverse(key_of(kv)));
            } else {
                kvs.sort_by_key(key_of);
            }
        }
        let mut more = false;
        if limit > 0 && kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        RangeResponse {
            header,
            kvs,
            more,
            count,
        }
    }

    /// Applies a Put as one write.
    pub(crate) fn put(&mut self, req: &PutRequest) -> Result<WriteOutcome<PutResponse>, KvError> {
        check_put(req)?;
        self.check_put_state(req)?;
        let mut w = self.begin();
        let mut response = w.put(req);
        let (revision, events) = w.finish();
        response.header = Some(header(revision));
        Ok(WriteOutcome {
            response,
            events,
            revision,
        })
    }

    /// Applies a DeleteRange as one write (a write only if it deletes something).
    pub(crate) fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<WriteOutcome<DeleteRangeResponse>, KvError> {
        check_delete(req)?;
        let mut w = self.begin();
        let mut response = w.delete_range(req);
        let (revision, events) = w.finish();
        response.header = Some(header(revision));
        Ok(WriteOutcome {
            response,
            events,
            revision,
        })
    }

    /// Applies a Txn as one write: every compare (of nested transactions too) is evaluated
    /// against the state before the transaction, as etcd does; then the chosen operations run
    /// in order, later ones seeing the effects of earlier ones, all at one revision.
    ///
    /// `max_range_bytes` bounds the key-values all the transaction's reads collect together.
    /// It is checked before anything is written (a transaction fails whole or applies whole),
    /// against the state before the transaction: its own puts, bounded by the request size,
    /// are not counted.
    pub(crate) fn txn(
        &mut self,
        req: &TxnRequest,
        max_range_bytes: Option<usize>,
    ) -> Result<WriteOutcome<TxnResponse>, KvError> {
        check_txn(req)?;
        let path = self.choose_path(req);
        let mut budget = max_range_bytes;
        self.check_path_state(req, &path, &mut budget)?;
        let mut w = self.begin();
        let mut response = w.txn(req, &path);
        let (revision, events) = w.finish();
        set_txn_revisions(&mut response, revision);
        Ok(WriteOutcome {
            response,
            events,
            revision,
        })
    }

    /// Compacts at `revision`: reads and watches before it are refused from now on, and the
    /// past versions no read at or after it can see (those replaced at or before it) are
    /// dropped. The revision does not change. Returns the header revision.
    pub(crate) fn compact(&mut self, revision: i64) -> Result<i64, KvError> {
        if revision > self.revision {
            return Err(KvError::FutureRevision);
        }
        if revision <= self.compact_revision {
            return Err(KvError::Compacted);
        }
        self.compact_revision = revision;
        let mut freed = 0;
        self.data.drop_past_through(revision, &mut |key, old| {
            freed += record_size(key, &old.value)
        });
        self.size_bytes = self.size_bytes.saturating_sub(freed);
        Ok(self.revision)
    }

    fn begin(&mut self) -> WriteTxn<'_> {
        let revision = self.revision + 1;
        WriteTxn {
            store: self,
            revision,
            events: Vec::new(),
            changed: false,
        }
    }

    /// Puts that keep the current value or lease need the key to exist; a put with a lease
    /// needs the lease to exist.
    fn check_put_state(&self, req: &PutRequest) -> Result<(), KvError> {
        if (req.ignore_value || req.ignore_lease) && self.data.get(&req.key).is_none() {
            return Err(KvError::InvalidArgument("key not found".into()));
        }
        if req.lease != 0 && self.leases.get(req.lease).is_none() {
            return Err(KvError::lease_not_found());
        }
        Ok(())
    }

    fn choose_path(&self, req: &TxnRequest) -> TxnPath {
        let succeeded = req.compare.iter().all(|c| self.evaluate(c));
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let nested = ops
            .iter()
            .filter_map(|op| match &op.request {
                Some(Request::RequestTxn(t)) => Some(self.choose_path(t)),
                _ => None,
            })
            .collect();
        TxnPath { succeeded, nested }
    }

    /// Checks what the chosen path needs from the current state; `budget` is what is left of
    /// the bound on the bytes its reads collect (`None`: unbounded).
    fn check_path_state(
        &self,
        req: &TxnRequest,
        path: &TxnPath,
        budget: &mut Option<usize>,
    ) -> Result<(), KvError> {
        let ops = if path.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut nested = path.nested.iter();
        for op in ops {
            match &op.request {
                Some(Request::RequestRange(r)) => {
                    self.check_read_revision(r.revision)?;
                    if let Some(left) = budget {
                        *left -= self.range_size(r, self.read_at(r.revision), *left)?;
                    }
                }
                Some(Request::RequestPut(p)) => self.check_put_state(p)?,
                Some(Request::RequestTxn(t)) => {
                    if let Some(p) = nested.next() {
                        self.check_path_state(t, p, budget)?;
                    }
                }
                Some(Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    /// etcd's compare rule: over a range, every key must satisfy the comparison; a missing key
    /// compares as all-zero metadata, except that a value comparison on no key is false.
    fn evaluate(&self, c: &Compare) -> bool {
        let range = KeyRange::new(&c.key, &c.range_end);
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        let mut matched = self.iter_range(&range).peekable();
        if matched.peek().is_none() {
            if target == CompareTarget::Value {
                return false;
            }
            return compare_record(c, target, None);
        }
        matched.all(|(k, r)| {
            let lease = self.leases.lease_of(&k, r.mod_revision);
            compare_record(c, target, Some((&r, lease)))
        })
    }
}

/// Which state a read sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadAt {
    /// The live keys (the current revision, or inside a transaction, its writes so far).
    Live,
    /// The key space as of this past revision (at or after the compaction point).
    Past(i64),
}

impl ReadAt {
    /// What a read asking for `revision` sees when the live keys are at `live` (0 or `live`
    /// and later: the live keys).
    fn of(revision: i64, live: i64) -> Self {
        if revision <= 0 || revision >= live {
            ReadAt::Live
        } else {
            ReadAt::Past(revision)
        }
    }
}

/// The union of two ascending key sequences, each key once.
struct MergeKeys<A: Iterator<Item = Bytes>, B: Iterator<Item = Bytes>> {
    a: Peekable<A>,
    b: Peekable<B>,
}

impl<A: Iterator<Item = Bytes>, B: Iterator<Item = Bytes>> Iterator for MergeKeys<A, B> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) => match x.cmp(y) {
                Ordering::Less => self.a.next(),
                Ordering::Greater => self.b.next(),
                Ordering::Equal => {
                    self.b.next();
                    self.a.next()
                }
            },
            (Some(_), None) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

/// How a Range is served: its sort, its limit, and whether every key of the range must be
/// collected before the limit applies.
struct RangePlan {
    target: SortTarget,
    order: SortOrder,
    /// 0: no limit.
    limit: usize,
    /// Revision filters or a sort other than ascending by key: the first `limit` keys in key
    /// order are not the answer.
    needs_all: bool,
}

impl RangePlan {
    fn of(req: &RangeRequest) -> Self {
        // Sort orders and enums were validated by `check_range`.
        let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
        if order == SortOrder::None && target != SortTarget::Key {
            order = SortOrder::Ascend; // etcd: a sort target without an order sorts ascending
        }
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let needs_all = filtered
            || !(order == SortOrder::None
                || (order == SortOrder::Ascend && target == SortTarget::Key));
        RangePlan {
            target,
            order,
            limit: usize::try_from(req.limit).unwrap_or(0),
            needs_all,
        }
    }
}

/// `record`: the key's live version and its lease, `None` for a missing key.
fn compare_record(c: &Compare, target: CompareTarget, record: Option<(&KeyRecord, i64)>) -> bool {
    let ordering = match target {
        CompareTarget::Value => {
            let wanted: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            record
                .map_or(&[][..], |(r, _)| r.value.as_ref())
                .cmp(wanted)
        }
        CompareTarget::Version
        | CompareTarget::Create
        | CompareTarget::Mod
        | CompareTarget::Lease => {
            let actual = record.map_or(0, |(r, lease)| match target {
                CompareTarget::Version => r.version,
                CompareTarget::Create => r.create_revision,
                CompareTarget::Mod => r.mod_revision,
                _ => lease,
            });
            let wanted = match (&c.target_union, target) {
                (Some(TargetUnion::Version(v)), CompareTarget::Version)
                | (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create)
                | (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod)
                | (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => *v,
                _ => 0,
            };
            actual.cmp(&wanted)
        }
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}

/// Which branch each transaction on the executed path takes, decided before any write.
#[derive(Debug)]
struct TxnPath {
    succeeded: bool,
    /// One entry per nested transaction of the chosen branch, in order.
    nested: Vec<TxnPath>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum SortKey {
    Int(i64),
    Bytes(Bytes),
}

/// The writes of one command, all at `revision`. Infallible: everything that can fail was
/// checked before it began, so a command either fails whole or applies whole.
struct WriteTxn<'a> {
    store: &'a mut KvStore,
    revision: i64,
    /// Its events, if the store records them.
    events: Vec<Event>,
    /// Whether it changed anything yet (the store revision then advances).
    changed: bool,
}

/// The value a put leaves on its key: the request's, or the replaced one's if the request
/// keeps it (`ignore_value`; etcd refuses that on a missing key before the put is applied).
fn put_value<'a>(req: &'a PutRequest, prev: Option<&'a KeyRecord>) -> &'a Bytes {
    match (prev, req.ignore_value) {
        (Some(p), true) => &p.value,
        _ => &req.value,
    }
}

impl WriteTxn<'_> {
    fn put(&mut self, req: &PutRequest) -> PutResponse {
        let revision = self.revision;
        let after = |prev: Option<&KeyRecord>| {
            let (create_revision, version) = match prev {
                Some(p) => (p.create_revision, p.version + 1),
                None => (revision, 1),
            };
            KeyRecord {
                value: put_value(req, prev).clone(),
                create_revision,
                mod_revision: revision,
                version,
            }
        };
        // One lookup of the key sets the new record and yields the one it replaces; the new
        // one, a function of that alone, is built again for the event (a refcount, not a copy).
        let prev = self
            .store
            .data
            .replace(req.key.clone(), &mut |prev| after(prev));
        self.changed = true;
        let recording = self.store.recording;
        self.store.size_bytes += record_size(&req.key, put_value(req, prev.as_ref()));
        if let Some(p) = &prev {
            self.store.size_bytes -= record_size(&req.key, &p.value);
        }
        // The replaced version as clients see it, for the response if asked and the event.
        let prev_kv = if req.prev_kv || recording {
            prev.as_ref().map(|p| self.store.kv(&req.key, p))
        } else {
            None
        };
        let record = recording.then(|| after(prev.as_ref()));
        if let Some(p) = prev {
            self.keep(req.key.clone(), p);
        }
        // etcd: a put keeps the key's lease only when asked to; otherwise the key moves to
        // the put's lease (0: none).
        let lease = if req.ignore_lease {
            self.store.leases.lease_of_live(&req.key)
        } else {
            req.lease
        };
        self.store.leases.attach(&req.key, lease, self.revision);
        // The event takes the replaced version, cloned only if the response wants it too.
        let (answered, event_prev) = match (req.prev_kv, record.is_some()) {
            (true, true) => (prev_kv.clone(), prev_kv),
            (true, false) => (prev_kv, None),
            (false, _) => (None, prev_kv),
        };
        if let Some(record) = record {
            let mut kv = to_kv(&req.key, &record);
            kv.lease = lease;
            self.events.push(Event {
                r#type: EventType::Put as i32,
                kv: Some(kv),
                prev_kv: event_prev,
            });
        }
        PutResponse {
            header: None,
            prev_kv: answered,
        }
    }

    fn delete_range(&mut self, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let range = KeyRange::new(&req.key, &req.range_end);
        let doomed: Vec<Bytes> = self.store.iter_range(&range).map(|(k, _)| k).collect();
        let mut prev_kvs = Vec::new();
        for key in &doomed {
            if let Some(prev_kv) = self.delete_key(key)
                && req.prev_kv
            {
                prev_kvs.push(prev_kv);
            }
        }
        DeleteRangeResponse {
            header: None,
            deleted: doomed.len() as i64,
            prev_kvs,
        }
    }

    fn txn(&mut self, req: &TxnRequest, path: &TxnPath) -> TxnResponse {
        let ops = if path.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => {
                    // Reads inside a transaction see its earlier writes; a read at an earlier
                    // revision sees the history.
                    let live = if !self.changed {
                        self.store.revision
                    } else {
                        self.revision
                    };
                    let at = ReadAt::of(r.revision, live);
                    Some(Response::ResponseRange(
                        self.store.range_unchecked(r, at, live),
                    ))
                }
                Some(Request::RequestPut(p)) => Some(Response::ResponsePut(self.put(p))),
                Some(Request::RequestDeleteRange(d)) => {
                    Some(Response::ResponseDeleteRange(self.delete_range(d)))
                }
                Some(Request::RequestTxn(t)) => {
                    nested.next().map(|p| Response::ResponseTxn(self.txn(t, p)))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        TxnResponse {
            header: None,
            succeeded: path.succeeded,
            responses,
        }
    }

    /// Deletes `key` (detaching it from its lease) and returns its last version, `None` if
    /// it is not live.
    fn delete_key(&mut self, key: &Bytes) -> Option<KeyValue> {
        let prev = self.store.data.remove(key)?;
        self.store.size_bytes -= record_size(key, &prev.value);
        let prev_kv = self.store.kv(key, &prev);
        self.store.leases.detach(key);
        self.keep(key.clone(), prev);
        self.changed = true;
        if self.store.recording {
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: key.clone(),
                    mod_revision: self.revision,
                    ..KeyValue::default()
                }),
                prev_kv: Some(prev_kv.clone()),
            });
        }
        Some(prev_kv)
    }

    /// Keeps the version `record` of `key`, replaced by this write, in the history — unless
    /// this write made it (a key written twice in one transaction): no revision ever saw it.
    fn keep(&mut self, key: Bytes, record: KeyRecord) {
        if record.mod_revision < self.revision {
            self.store.push_past(key, record, self.revision);
        }
    }

    /// Ends the write: the store revision advances only if something changed.
    fn finish(self) -> (i64, Vec<Event>) {
        if self.changed {
            self.store.revision = self.revision;
        }
        (self.store.revision, self.events)
    }
}

/// Fills the header revision of a transaction response and of its nested write responses
/// (range responses keep the revision they read at).
fn set_txn_revisions(response: &mut TxnResponse, revision: i64) {
    response.header = Some(header(revision));
    for op in &mut response.responses {
        match &mut op.response {
            Some(Response::ResponsePut(r)) => r.header = Some(header(revision)),
            Some(Response::ResponseDeleteRange(r)) => r.header = Some(header(revision)),
            Some(Response::ResponseTxn(t)) => set_txn_revisions(t, revision),
            Some(Response::ResponseRange(_)) | None => {}
        }
    }
}

fn passes_filters(req: &RangeRequest, r: &KeyRecord) -> bool {
    (req.min_mod_revision == 0 || r.mod_revision >= req.min_mod_revision)
        && (req.max_mod_revision == 0 || r.mod_revision <= req.max_mod_revision)
        && (req.min_create_revision == 0 || r.create_revision >= req.min_create_revision)
        && (req.max_create_revision == 0 || r.create_revision <= req.max_create_revision)
}

fn split_kv(kv: KeyValue) -> (Bytes, KeyRecord) {
    (
        kv.key,
        KeyRecord {
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        },
    )
}

fn record_size(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64 + KEY_OVERHEAD_BYTES
}

impl KvStore {
    /// [`kv`](Self::kv), taking the key and record.
    fn kv_owned(&self, key: Bytes, r: KeyRecord) -> KeyValue {
        let lease = self.leases.lease_of(&key, r.mod_revision);
        KeyValue {
            key,
            create_revision: r.create_revision,
            mod_revision: r.mod_revision,
            version: r.version,
            value: r.value,
            lease,
        }
    }
}

pub(crate) fn to_kv(key: &Bytes, r: &KeyRecord) -> KeyValue {
    KeyValue {
        key: key.clone(),
        create_revision: r.create_revision,
        mod_revision: r.mod_revision,
        version: r.version,
        value: r.value.clone(),
        lease: 0,
    }
}

/// A response header carrying only the revision; the server fills in the member fields.
pub(crate) fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..ResponseHeader::default()
    }
}
