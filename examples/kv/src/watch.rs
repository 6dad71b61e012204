//! The [`WatchHub`]: a bounded history of recent change events, published by the state
//! machine as it applies writes and read by watchers at their own pace.
//!
//! Watchers *pull*: each remembers the next revision it needs and reads from the history when
//! the hub signals a new revision. Nothing is queued per watcher, so memory is bounded by the
//! history alone. A watcher whose next revision has fallen out of the history (it was too
//! slow, or it asked for a revision from before the history) gets etcd's "compacted" answer:
//! the oldest revision still available, and the watch is canceled.
//!
//! The history holds whole revisions, never part of one: a write that changes more keys than
//! the bounds allow (a `del --prefix` over 100 000 keys) is kept whole as long as it is the
//! newest revision, so every watcher can still read it. A watcher holds on to the revision it
//! is delivering ([`WatchHub::revision_events`] hands out a shared reference), so an eviction
//! in the middle of a large revision does not cut its delivery short.
//!
//! The history is kept only while someone follows it: every reader (a Watch stream, an
//! election's observer, a lock waiting for older keys) first takes a receiver from
//! [`WatchHub::subscribe`], and while nobody holds one, publishing keeps nothing and moves
//! the floor past what it published (and a snapshot's install rebuilds none). Keeping it with
//! nobody watching cost a third of the apply's CPU per put (the events' allocations, and
//! freeing them, cold, 10,000 revisions later, with the applied entries they hold alive) and,
//! end to end, about 8% of the servers' CPU per put at 256 clients (eight alternating pairs;
//! docs/benchmarks.md, 2026-12-06 18:40). A batch of writes that begins while nobody follows
//! does not even make its events: the hub is only told how far its revisions went
//! ([`WatchHub::pass`]). A reader that starts behind the floor is told so,
//! as a slow one is, and the Watch service then replays those revisions from the store's
//! MVCC history (`watch_service.rs`) if they are after the compaction point. (So a
//! watch may start at the compaction revision itself, as etcd allows, only while the history
//! holds it: the MVCC history has lost that revision's deletes. Keeping the versions the
//! compaction revision replaced would rebuild them, but then compacting at the current
//! revision would not free a deleted range, as etcd's recovery from `NOSPACE` needs.)
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use prost::Message;
use tokio::sync::watch;

use crate::key_range::KeyRange;
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::mvccpb::{Event, event::EventType};

/// Bounds and timings of the watch machinery.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Most events kept in the history (etcd keeps its whole MVCC history until compaction;
    /// dengine-kv keeps this many recent events). The newest revision is always kept whole,
    /// even when it alone has more events.
    pub max_history_events: usize,
    /// Most bytes (encoded events) kept in the history, with the same exception.
    pub max_history_bytes: usize,
    /// Most events in one watch response. A watcher created with etcd's `fragment` flag gets
    /// a larger revision split into several responses (`fragment = true` on all but the last);
    /// without it, as in etcd, a revision's events go out in one response, however many.
    pub max_events_per_response: usize,
    /// Responses buffered per watch stream before the server waits for the client.
    pub response_buffer: usize,
    /// Most watchers on one watch stream.
    pub max_watchers_per_stream: usize,
    /// How often watchers created with `progress_notify` get an empty response carrying the
    /// current revision (etcd's default is 10 minutes).
    pub progress_interval: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            max_history_events: 10_000,
            max_history_bytes: 64 << 20,
            max_events_per_response: 1_000,
            response_buffer: 16,
            max_watchers_per_stream: 10_000,
            progress_interval: Duration::from_secs(600),
        }
    }
}

/// What one watcher wants to see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchFilter {
    range: KeyRange,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
}

impl WatchFilter {
    /// Changes to `key`, or to `[key, range_end)` (`range_end == "\0"`: every key `>= key`),
    /// as in etcd's `WatchCreateRequest`.
    pub fn new(key: Bytes, range_end: Bytes) -> Self {
        WatchFilter {
            range: KeyRange::new(&key, &range_end),
            no_put: false,
            no_delete: false,
            prev_kv: false,
        }
    }

    /// Also deliver each event's previous key-value pair.
    pub fn with_prev_kv(mut self, prev_kv: bool) -> Self {
        self.prev_kv = prev_kv;
        self
    }

    /// Leave out PUT (`FilterType::Noput`) and/or DELETE (`FilterType::Nodelete`) events.
    pub fn with_filters(mut self, filters: impl IntoIterator<Item = FilterType>) -> Self {
        for f in filters {
            match f {
                FilterType::Noput => self.no_put = true,
                FilterType::Nodelete => self.no_delete = true,
            }
        }
        self
    }

    /// Whether the watcher wants `event`.
    pub(crate) fn matches(&self, event: &Event) -> bool {
        let is_put = event.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return false;
        }
        event
            .kv
            .as_ref()
            .is_some_and(|kv| self.range.contains(&kv.key))
    }
}

/// Events for one watcher, read from the history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventBatch {
    /// Matching events in revision order (possibly none).
    pub events: Vec<Event>,
    /// The watcher has now seen every event up to and including this revision; its next read
    /// starts at `through_revision + 1`.
    pub through_revision: i64,
    /// More events may be waiting (the batch stopped at `max_events`).
    pub more: bool,
}

/// The watcher's next revision is no longer in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "mvcc: required revision has been compacted; the oldest available revision is {compact_revision}"
)]
pub struct Compacted {
    /// The oldest revision that can still be watched (etcd's `compact_revision`).
    pub compact_revision: i64,
}

impl WatchFilter {
    /// `event` as this watcher receives it (without `prev_kv` unless it asked for it).
    pub(crate) fn deliver(&self, event: &Event) -> Event {
        let mut event = event.clone();
        if !self.prev_kv {
            event.prev_kv = None;
        }
        event
    }
}

/// Every event of one revision, in the order they happened. Shared by the history and the
/// watchers delivering it.
#[derive(Debug)]
pub(crate) struct RevisionEvents {
    pub(crate) revision: i64,
    pub(crate) events: Vec<Event>,
    /// Encoded size of the events.
    bytes: usize,
}

#[derive(Debug)]
struct HubState {
    /// Whole revisions, oldest first.
    history: VecDeque<Arc<RevisionEvents>>,
    /// Events in `history`.
    history_events: usize,
    /// Encoded bytes of the events in `history`.
    history_bytes: usize,
    /// The store revision of the last publish (or reset).
    revision: i64,
    /// Every event with revision `>= floor` is in the history.
    floor: i64,
    /// The store's compaction revision (0: never compacted).
    compacted: i64,
}

impl HubState {
    /// Appends the events of `revision` (newer than every revision held) to the history.
    fn push(&mut self, revision: i64, events: Vec<Event>) {
        let bytes = events.iter().map(Message::encoded_len).sum();
        self.history_events += events.len();
        self.history_bytes += bytes;
        self.history.push_back(Arc::new(RevisionEvents {
            revision,
            events,
            bytes,
        }));
    }

    /// Drops the whole history (nobody follows it): every revision up to the current one is
    /// below the floor. Returns what was dropped, to be freed outside the lock.
    fn forget_all(&mut self) -> VecDeque<Arc<RevisionEvents>> {
        self.history_events = 0;
        self.history_bytes = 0;
        self.floor = self.floor.max(self.revision.saturating_add(1));
        std::mem::take(&mut self.history)
    }

    /// Drops the oldest revisions, whole, while the history is over its bounds; the newest
    /// one is always kept.
    fn trim(&mut self, config: &WatchConfig) {
        while self.history.len() > 1
            && (self.history_events > config.max_history_events
                || self.history_bytes > config.max_history_bytes)
        {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.history_events -= old.events.len();
            self.history_bytes -= old.bytes;
            self.floor = self.floor.max(old.revision + 1);
        }
    }
}

/// The event history shared by a [`KvStateMachine`](crate::KvStateMachine), which publishes
/// into it, and the Watch service, which reads from it. Cheap to clone; clones share the
/// history.
#[derive(Clone, Debug)]
pub struct WatchHub {
    state: Arc<Mutex<HubState>>,
    revision_tx: Arc<watch::Sender<i64>>,
    closed: Arc<watch::Sender<bool>>,
    config: Arc<WatchConfig>,
    usage: Arc<Usage>,
}

/// What the state machine last published about its size, for the space quota's check before
/// a write is proposed (read on every put: atomics, no lock).
#[derive(Debug, Default)]
struct Usage {
    size_bytes: AtomicU64,
    no_space: AtomicBool,
}

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub::new(WatchConfig::default())
    }
}

impl WatchHub {
    /// An empty hub at revision 0.
    pub fn new(config: WatchConfig) -> Self {
        let (revision_tx, _) = watch::channel(0);
        WatchHub {
            state: Arc::new(Mutex::new(HubState {
                history: VecDeque::new(),
                history_events: 0,
                history_bytes: 0,
                revision: 0,
                floor: 1,
                compacted: 0,
            })),
            revision_tx: Arc::new(revision_tx),
            closed: Arc::new(watch::channel(false).0),
            config: Arc::new(config),
            usage: Arc::default(),
        }
    }

    /// Publishes the store's size (an estimate of the bytes its keys and values hold) and
    /// whether a `NOSPACE` alarm is raised (the state machine, after each batch).
    pub(crate) fn set_usage(&self, size_bytes: u64, no_space: bool) {
        self.usage.size_bytes.store(size_bytes, Ordering::Relaxed);
        self.usage.no_space.store(no_space, Ordering::Relaxed);
    }

    /// The store's size as last published.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.usage.size_bytes.load(Ordering::Relaxed)
    }

    /// Whether a `NOSPACE` alarm was raised as last published.
    pub(crate) fn no_space(&self) -> bool {
        self.usage.no_space.load(Ordering::Relaxed)
    }

    /// The configuration the hub was made with.
    pub fn config(&self) -> &WatchConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock()
    }

    /// The latest revision published (the local member's applied store revision).
    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    /// The store's last compaction revision (0: never compacted), as last published.
    pub fn compact_revision(&self) -> i64 {
        self.lock().compacted
    }

    /// The oldest revision a new watcher may start from.
    pub fn oldest_revision(&self) -> i64 {
        self.lock().floor
    }

    /// Ends every watch stream served from this hub (its member is stopping): their clients
    /// get UNAVAILABLE and can watch again on another member.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once [`close`](Self::close) has been called.
    pub(crate) async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// A receiver that changes whenever a new revision is published. While one is held, the
    /// hub keeps its history of recent events (see the module docs).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision_tx.subscribe()
    }

    /// Whether someone holds a receiver from [`subscribe`](Self::subscribe): only then is
    /// the history kept.
    pub(crate) fn is_followed(&self) -> bool {
        self.revision_tx.receiver_count() > 0
    }

    /// Records the events of one write at `revision` and wakes the watchers: [`publish_all`]
    /// of one write.
    ///
    /// [`publish_all`]: Self::publish_all
    #[cfg(test)]
    pub(crate) fn publish(&self, revision: i64, events: Vec<Event>) {
        self.publish_all(vec![(revision, events)]);
    }

    /// Records the events of consecutive writes, each as (revision, events), in revision
    /// order (the state machine calls it once per applied batch), and wakes the watchers
    /// once. Old revisions beyond the bounds are dropped, whole; the newest one is always
    /// kept (trimming once after all of them keeps what trimming after each would: the
    /// longest run of newest revisions within the bounds). One call per batch instead of per
    /// write: the lock and the wake-up (eight `Notify`s, each locked even with no watcher)
    /// per write had cost about a tenth of the state machine's apply of a put (`cargo bench
    /// -p dengine-kv --bench apply`: 4.90 against 4.38 µs of CPU per put, 2026-12-06).
    ///
    /// While nobody holds a receiver from [`subscribe`](Self::subscribe), nothing is kept:
    /// the history is emptied and its floor moves past `writes`, as if they had been trimmed
    /// ([`pass`](Self::pass); see the module docs).
    pub(crate) fn publish_all(&self, writes: Vec<(i64, Vec<Event>)>) {
        let Some(&(newest, _)) = writes.last() else {
            return;
        };
        // Read before the lock: a reader that subscribes after this read finds either the
        // writes in the history or a floor past them, never a gap it is not told of.
        if !self.is_followed() {
            // (Freed before `pass` takes the lock.)
            drop(writes);
            self.pass(newest);
            return;
        }
        {
            let mut s = self.lock();
            for (revision, events) in writes {
                debug_assert!(revision > s.revision, "revisions are published in order");
                s.push(revision, events);
                s.revision = revision;
            }
            s.trim(&self.config);
        }
        self.revision_tx.send_replace(newest);
    }

    /// The writes through `revision` were applied and nobody follows the hub, or nobody did
    /// when their batch began, so they made no events (`KvStore::record_events`): nothing is
    /// kept, the floor moves past them, and readers are woken. A reader that subscribed
    /// meanwhile finds the floor past its revisions, never a gap it is not told of, and the
    /// Watch service replays them from the store's MVCC history. Nothing happens if the hub
    /// is already at `revision` (a batch that changed nothing).
    pub(crate) fn pass(&self, revision: i64) {
        let dropped = {
            let mut s = self.lock();
            debug_assert!(revision >= s.revision, "revisions are published in order");
            if revision <= s.revision {
                return;
            }
            s.revision = revision;
            s.forget_all()
        };
        // (Freed outside the lock.)
        drop(dropped);
        self.revision_tx.send_replace(revision);
    }

    /// The store was compacted at `revision`: watching from before it is refused, as in etcd.
    pub(crate) fn compact(&self, revision: i64) {
        let mut s = self.lock();
        s.compacted = s.compacted.max(revision);
        s.floor = s.floor.max(revision);
        while s.history.front().is_some_and(|e| e.revision < revision) {
            if let Some(old) = s.history.pop_front() {
                s.history_events -= old.events.len();
                s.history_bytes -= old.bytes;
            }
        }
    }

    /// The store was replaced (snapshot installed) at `revision`: the history is replaced by
    /// `replayed`, the events of every revision from `from` on (rebuilt from the store's
    /// MVCC history, oldest first, within the hub's bounds); watchers that need an earlier
    /// revision are answered "compacted".
    pub(crate) fn reset(
        &self,
        revision: i64,
        compact_revision: i64,
        from: i64,
        replayed: Vec<(i64, Vec<Event>)>,
    ) {
        {
            let mut s = self.lock();
            s.history.clear();
            s.history_events = 0;
            s.history_bytes = 0;
            s.revision = revision;
            s.compacted = compact_revision;
            // Not `clamp`: it panics on inverted bounds, and a snapshot is input.
            s.floor = from
                .max(compact_revision.max(1))
                .min(revision.saturating_add(1));
            for (at, events) in replayed {
                if at >= s.floor && at <= revision {
                    s.push(at, events);
                }
            }
            s.trim(&self.config);
        }
        self.revision_tx.send_replace(revision);
    }

    /// The first revision at or after `from` that has events, shared (holding it keeps it
    /// alive after the history drops it); `None` when `from` is beyond the current revision;
    /// [`Compacted`] when `from` is older than the history.
    pub(crate) fn revision_events(
        &self,
        from: i64,
    ) -> Result<Option<Arc<RevisionEvents>>, Compacted> {
        let s = self.lock();
        if from > s.revision {
            return Ok(None);
        }
        if from < s.floor {
            return Err(Compacted {
                compact_revision: s.floor,
            });
        }
        let at = s.history.partition_point(|e| e.revision < from);
        Ok(s.history.get(at).cloned())
    }

    /// Reads the events matching `filter` from revision `from` on, at most about `max_events`
    /// of them (whole revisions only: a revision with more goes whole). `from` beyond the
    /// current revision gives an empty batch; `from` older than the history is [`Compacted`].
    /// The history holds only what was published while a receiver from
    /// [`subscribe`](Self::subscribe) was held: subscribe first, and keep it while reading.
    pub fn read_events(
        &self,
        from: i64,
        filter: &WatchFilter,
        max_events: usize,
    ) -> Result<EventBatch, Compacted> {
        let s = self.lock();
        if from > s.revision {
            return Ok(EventBatch {
                events: Vec::new(),
                through_revision: from - 1,
                more: false,
            });
        }
        if from < s.floor {
            return Err(Compacted {
                compact_revision: s.floor,
            });
        }
        let start = s.history.partition_point(|e| e.revision < from);
        let mut events = Vec::new();
        let mut through_revision = s.revision;
        let mut more = false;
        for entry in s.history.range(start..) {
            if events.len() >= max_events.max(1) {
                through_revision = entry.revision - 1;
                more = true;
                break;
            }
            events.extend(
                entry
                    .events
                    .iter()
                    .filter(|e| filter.matches(e))
                    .map(|e| filter.deliver(e)),
            );
        }
        Ok(EventBatch {
            events,
            through_revision,
            more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    fn put(key: &'static str, revision: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: Bytes::from_static(key.as_bytes()),
                mod_revision: revision,
                ..KeyValue::default()
            }),
            prev_kv: Some(KeyValue::default()),
        }
    }

    fn keys(batch: &EventBatch) -> Vec<(String, i64)> {
        batch
            .events
            .iter()
            .map(|e| {
                let kv = e.kv.clone().unwrap_or_default();
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.mod_revision,
                )
            })
            .collect()
    }

    #[test]
    fn reads_from_a_past_revision_within_the_history() {
        let hub = WatchHub::default();
        let _follow = hub.subscribe();
        for (i, k) in ["a", "b", "a", "c"].into_iter().enumerate() {
            hub.publish(i as i64 + 1, vec![put(k, i as i64 + 1)]);
        }
        let f = WatchFilter::new(Bytes::from_static(b"a"), Bytes::new());
        let batch = hub.read_events(2, &f, 100).unwrap();
        assert_eq!(keys(&batch), [("a".to_string(), 3)]);
        assert_eq!(batch.through_revision, 4);
        assert!(!batch.more);
        assert!(batch.events[0].prev_kv.is_none(), "prev_kv only when asked");
        let with_prev = f.with_prev_kv(true);
        assert!(
            hub.read_events(1, &with_prev, 100).unwrap().events[0]
                .prev_kv
                .is_some()
        );
    }

    #[test]
    fn batches_stop_at_revision_boundaries() {
        let hub = WatchHub::default();
        let _follow = hub.subscribe();
        hub.publish(1, vec![put("a", 1), put("b", 1), put("c", 1)]);
        hub.publish(2, vec![put("d", 2)]);
        let all = WatchFilter::new(Bytes::from_static(b"\0"), Bytes::from_static(b"\0"));
        let first = hub.read_events(1, &all, 2).unwrap();
        assert_eq!(first.events.len(), 3, "revision 1 is not split");
        assert_eq!(first.through_revision, 1);
        assert!(first.more);
        let second = hub.read_events(2, &all, 2).unwrap();
        assert_eq!(keys(&second), [("d".to_string(), 2)]);
        assert!(!second.more);
    }

    #[test]
    fn history_bound_makes_old_revisions_compacted() {
        let config = WatchConfig {
            max_history_events: 3,
            ..WatchConfig::default()
        };
        let hub = WatchHub::new(config);
        let _follow = hub.subscribe();
        for r in 1..=5 {
            hub.publish(r, vec![put("k", r)]);
        }
        let f = WatchFilter::new(Bytes::from_static(b"k"), Bytes::new());
        assert_eq!(
            hub.read_events(2, &f, 10),
            Err(Compacted {
                compact_revision: 3
            })
        );
        assert_eq!(hub.read_events(3, &f, 10).unwrap().events.len(), 3);
        assert_eq!(hub.oldest_revision(), 3);
    }

    #[test]
    fn a_revision_larger_than_the_bounds_is_kept_whole_while_newest() {
        let config = WatchConfig {
            max_history_events: 3,
            ..WatchConfig::default()
        };
        let hub = WatchHub::new(config);
        let _follow = hub.subscribe();
        hub.publish(1, vec![put("a", 1)]);
        hub.publish(2, (0..10).map(|_| put("b", 2)).collect());
        // Revision 1 made room; revision 2 stays whole although it alone passes the bound.
        assert_eq!(hub.oldest_revision(), 2);
        let held = hub.revision_events(2).unwrap().unwrap();
        assert_eq!((held.revision, held.events.len()), (2, 10));
        let all = WatchFilter::new(Bytes::from_static(b"\0"), Bytes::from_static(b"\0"));
        assert_eq!(hub.read_events(2, &all, 3).unwrap().events.len(), 10);
        // The next write pushes it out, whole; a reader holding it keeps it.
        hub.publish(3, vec![put("c", 3)]);
        assert_eq!(hub.oldest_revision(), 3);
        assert_eq!(
            hub.revision_events(2).unwrap_err(),
            Compacted {
                compact_revision: 3
            }
        );
        assert_eq!(held.events.len(), 10);
        assert_eq!(hub.revision_events(3).unwrap().unwrap().revision, 3);
        assert!(hub.revision_events(4).unwrap().is_none());
    }

    #[test]
    fn publishing_a_batch_keeps_what_publishing_each_write_would() {
        let all = WatchFilter::new(Bytes::from_static(b"\0"), Bytes::from_static(b"\0"));
        for bound in 1..=8 {
            let config = WatchConfig {
                max_history_events: bound,
                ..WatchConfig::default()
            };
            let hub = WatchHub::new(config);
            let _follow = hub.subscribe();
            // Every write so far as (revision, events); the model keeps what trimming after
            // each write keeps: the newest revisions, whole, while they fit the bound, and
            // always the newest one.
            let mut written: Vec<(i64, usize)> = Vec::new();
            let mut revision = 0;
            // Batches of 1 to 5 writes of 1 to 4 events each.
            for size in [1, 3, 5, 2, 4, 1, 5, 3] {
                let writes: Vec<(i64, Vec<Event>)> = (0..size)
                    .map(|_| {
                        revision += 1;
                        let events = (0..1 + revision % 4).map(|_| put("k", revision)).collect();
                        (revision, events)
                    })
                    .collect();
                written.extend(writes.iter().map(|(r, e)| (*r, e.len())));
                hub.publish_all(writes);
                let mut kept: Vec<i64> = Vec::new();
                let mut total = 0;
                for &(r, n) in written.iter().rev() {
                    if !kept.is_empty() && total + n > bound {
                        break;
                    }
                    total += n;
                    kept.extend(std::iter::repeat_n(r, n));
                }
                kept.reverse();
                let got: Vec<i64> = hub
                    .read_events(hub.oldest_revision(), &all, usize::MAX)
                    .unwrap()
                    .events
                    .iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision)
                    .collect();
                assert_eq!(got, kept, "bound {bound}, through revision {revision}");
                assert_eq!(hub.oldest_revision(), kept[0], "bound {bound}");
            }
        }
    }

    #[test]
    fn future_start_waits_and_compaction_moves_the_floor() {
        let hub = WatchHub::default();
        let _follow = hub.subscribe();
        let f = WatchFilter::new(Bytes::from_static(b"k"), Bytes::new());
        let batch = hub.read_events(5, &f, 10).unwrap();
        assert!(batch.events.is_empty());
        assert_eq!(batch.through_revision, 4);
        for r in 1..=3 {
            hub.publish(r, vec![put("k", r)]);
        }
        hub.compact(2);
        assert_eq!(
            hub.read_events(1, &f, 10),
            Err(Compacted {
                compact_revision: 2
            })
        );
        assert_eq!(hub.read_events(2, &f, 10).unwrap().events.len(), 2);
        // A snapshot at 10, compacted at 4, with the events of 8 to 10 rebuilt: watching
        // from 8 on replays them; from before, "compacted".
        let replayed = (8..=10).map(|r| (r, vec![put("k", r)])).collect();
        hub.reset(10, 4, 8, replayed);
        assert_eq!(hub.compact_revision(), 4);
        assert_eq!(
            hub.read_events(7, &f, 10),
            Err(Compacted {
                compact_revision: 8
            })
        );
        assert_eq!(hub.read_events(8, &f, 10).unwrap().events.len(), 3);
        // Nothing rebuilt: only what comes next.
        hub.reset(10, 4, 11, Vec::new());
        assert_eq!(
            hub.read_events(10, &f, 10),
            Err(Compacted {
                compact_revision: 11
            })
        );
    }

    #[test]
    fn filters_drop_puts_or_deletes() {
        let hub = WatchHub::default();
        let _follow = hub.subscribe();
        let mut del = put("k", 2);
        del.r#type = EventType::Delete as i32;
        hub.publish(1, vec![put("k", 1)]);
        hub.publish(2, vec![del]);
        let f = WatchFilter::new(Bytes::from_static(b"k"), Bytes::new());
        let no_put = f.clone().with_filters([FilterType::Noput]);
        let no_delete = f.with_filters([FilterType::Nodelete]);
        assert_eq!(
            keys(&hub.read_events(1, &no_put, 10).unwrap()),
            [("k".to_string(), 2)]
        );
        assert_eq!(
            keys(&hub.read_events(1, &no_delete, 10).unwrap()),
            [("k".to_string(), 1)]
        );
    }

    #[test]
    fn writes_applied_without_events_move_the_floor_past_them_and_wake_readers() {
        let hub = WatchHub::default();
        let all = WatchFilter::new(Bytes::from_static(b"\0"), Bytes::from_static(b"\0"));
        let mut early = hub.subscribe();
        hub.publish(1, vec![put("a", 1)]);
        early.mark_unchanged();
        // A reader who came while revisions 2 and 3 were applied without their events (the
        // batch began with nobody following): it is woken, and told they are not here.
        hub.pass(3);
        assert!(early.has_changed().unwrap(), "the reader is woken");
        assert_eq!(*early.borrow_and_update(), 3);
        assert_eq!(hub.revision(), 3);
        assert_eq!(
            hub.read_events(2, &all, 10),
            Err(Compacted {
                compact_revision: 4
            })
        );
        assert!(hub.state.lock().history.is_empty(), "nothing older kept");
        // The next write with events is kept after them.
        hub.publish(4, vec![put("b", 4)]);
        assert_eq!(
            keys(&hub.read_events(4, &all, 10).unwrap()),
            [("b".into(), 4)]
        );
        // At the hub's revision, nothing happens (a batch that wrote nothing).
        early.mark_unchanged();
        hub.pass(4);
        assert!(!early.has_changed().unwrap());
        assert_eq!(hub.oldest_revision(), 4);
    }

    #[test]
    fn nothing_is_kept_while_nobody_follows_and_a_late_reader_is_told_where_it_starts() {
        let hub = WatchHub::default();
        let all = WatchFilter::new(Bytes::from_static(b"\0"), Bytes::from_static(b"\0"));
        hub.publish_all(vec![(1, vec![put("a", 1)]), (2, vec![put("b", 2)])]);
        assert_eq!(hub.revision(), 2);
        assert_eq!(
            hub.oldest_revision(),
            3,
            "nobody followed revisions 1 and 2"
        );
        assert_eq!(
            hub.read_events(1, &all, 10),
            Err(Compacted {
                compact_revision: 3
            })
        );
        // A reader arrives: what is published from now on is kept.
        let mut follow = hub.subscribe();
        hub.publish(3, vec![put("c", 3)]);
        assert!(follow.has_changed().unwrap(), "the reader is woken");
        assert_eq!(*follow.borrow_and_update(), 3);
        assert_eq!(
            keys(&hub.read_events(3, &all, 10).unwrap()),
            [("c".into(), 3)]
        );
        // It leaves: the next publish drops what was kept, and the floor moves past it.
        drop(follow);
        hub.publish(4, vec![put("d", 4)]);
        assert_eq!(hub.oldest_revision(), 5);
        assert!(hub.state.lock().history.is_empty());
        assert_eq!(
            hub.revision_events(4).unwrap_err(),
            Compacted {
                compact_revision: 5
            }
        );
        // A reader holding a revision keeps it although the hub dropped it.
        let _follow = hub.subscribe();
        hub.publish(5, vec![put("e", 5)]);
        let held = hub.revision_events(5).unwrap().unwrap();
        drop(_follow);
        hub.publish(6, vec![put("f", 6)]);
        assert_eq!(held.events.len(), 1);
        // Compaction after an unfollowed stretch keeps the floor where it is.
        hub.compact(3);
        assert_eq!((hub.oldest_revision(), hub.compact_revision()), (7, 3));
    }
}
