//! The in-memory implementations (feature `memory`): [`MemoryStore`], the one in-memory log
//! for everything that needs no disk (the core's own tests and examples, the simulator, runtime
//! tests), and [`MemoryStateMachine`].
//!
//! `MemoryStore` is at once a [`LogStore`] (async, for a runtime), the core's [`LogReader`]
//! (a clone of it), and a synchronous writer ([`MemoryStore::persist_now`] and friends) for
//! code that drives a `Raft` by hand. "Durable" means "survives as long as any clone of the
//! value": a test that reopens a store keeps a clone and hands that out again; a simulated
//! crash keeps the store and drops the `Raft` around it.

use std::collections::BTreeMap;
use std::future::{Future, ready};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::{Mutex, MutexGuard};

use super::error::StorageError;
use super::log_store::{LogReader, LogStore, StoredState};
use super::persist::PersistRequest;
use super::state_machine::{Command, StateMachine};
use super::validate::{validate_persist, validate_range, validate_snapshot};
use crate::types::{Entry, EntryId, HardState, LogIndex, SnapshotMeta, Term};

#[derive(Debug, Default)]
struct Inner {
    /// The last purged entry (index 0, term 0 for a log never compacted).
    compacted: EntryId,
    /// Entries `compacted.index + 1 ..`.
    entries: Vec<Entry>,
    hard_state: HardState,
    snapshot_meta: Option<SnapshotMeta>,
}

impl Inner {
    fn last_index(&self) -> LogIndex {
        self.compacted.index + self.entries.len() as u64
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index < self.compacted.index {
            return Err(StorageError::Compacted {
                index,
                first_index: self.compacted.index + 1,
            });
        }
        if index == self.compacted.index {
            return Ok(self.compacted.term);
        }
        self.slot(index)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable {
                index,
                last_index: self.last_index(),
            })
    }

    fn slot(&self, index: LogIndex) -> Option<&Entry> {
        let offset = index.checked_sub(self.compacted.index + 1)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    fn read(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        validate_range(low, high, self.compacted.index + 1, self.last_index())?;
        let mut bytes = 0u64;
        for index in low..high {
            let Some(entry) = self.slot(index) else { break };
            bytes = bytes.saturating_add(entry.size_bytes());
            if bytes > max_bytes && index > low {
                break;
            }
            out.push(entry.clone());
        }
        Ok(())
    }
}

/// An in-memory [`LogStore`] and [`LogReader`]. Clones share the same log; the
/// [`Reader`](LogStore::Reader) is such a clone.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// The last saved hard state.
    pub fn hard_state(&self) -> HardState {
        self.lock().hard_state
    }

    /// Carries out a [`PersistRequest`] at once: what [`LogStore::persist`] does, without the
    /// future. The request is validated as every store validates it
    /// ([`validate_persist`](super::validate_persist)); a refused one changes nothing.
    pub fn persist_now(&self, req: &PersistRequest) -> Result<(), StorageError> {
        let mut inner = self.lock();
        validate_persist(req, inner.compacted.index, inner.last_index())?;
        if let Some(hs) = req.hard_state {
            inner.hard_state = hs;
        }
        if let Some(first) = req.entries.first() {
            let keep = (first.index - inner.compacted.index - 1) as usize;
            inner.entries.truncate(keep);
            inner.entries.extend_from_slice(&req.entries);
        }
        Ok(())
    }

    /// Discards every entry up to and including `up_to` at once: what [`LogStore::purge`]
    /// does, without the future.
    pub fn purge_now(&self, up_to: LogIndex) -> Result<(), StorageError> {
        let mut inner = self.lock();
        // Past the end, purge the whole log: the runtime may pass a purge point from a
        // snapshot that covers more than this log holds.
        let up_to = up_to.min(inner.last_index());
        if up_to <= inner.compacted.index {
            return Ok(());
        }
        let term = inner.term(up_to)?;
        let drop = (up_to - inner.compacted.index) as usize;
        inner.entries.drain(..drop);
        inner.compacted = EntryId::new(term, up_to);
        Ok(())
    }

    /// Replaces the whole log by the snapshot `meta` at once (a follower installing its
    /// leader's snapshot): what [`LogStore::reset_to_snapshot`] does, without the future.
    pub fn reset_to_snapshot_now(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.snapshot_now(meta, true)
    }

    fn snapshot_now(&self, meta: &SnapshotMeta, reset: bool) -> Result<(), StorageError> {
        let mut inner = self.lock();
        let at = meta.last_included;
        let term_at = inner.slot(at.index).map(|e| e.term);
        validate_snapshot(meta, inner.compacted, term_at, reset)?;
        if reset {
            inner.entries.clear();
            inner.compacted = at;
        }
        inner.snapshot_meta = Some(meta.clone());
        Ok(())
    }
}

impl LogStore for MemoryStore {
    type Reader = MemoryStore;

    fn reader(&self) -> Self::Reader {
        self.clone()
    }

    fn load_state(&self) -> impl Future<Output = Result<StoredState, StorageError>> + Send {
        let inner = self.lock();
        ready(Ok(StoredState {
            hard_state: inner.hard_state,
            first_index: inner.compacted.index + 1,
            last_index: inner.last_index(),
            snapshot_meta: inner.snapshot_meta.clone(),
        }))
    }

    fn persist(
        &self,
        req: &PersistRequest,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        ready(self.persist_now(req))
    }

    fn read_entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<Entry>, StorageError>> + Send {
        let mut out = Vec::new();
        let result = self.lock().read(low, high, max_bytes, &mut out);
        ready(result.map(|()| out))
    }

    fn purge(&self, up_to: LogIndex) -> impl Future<Output = Result<(), StorageError>> + Send {
        ready(self.purge_now(up_to))
    }

    fn save_snapshot_meta(
        &self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        ready(self.snapshot_now(meta, false))
    }

    fn reset_to_snapshot(
        &self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        ready(self.snapshot_now(meta, true))
    }

    fn sync(&self) -> impl Future<Output = Result<(), StorageError>> + Send {
        ready(Ok(()))
    }
}

impl LogReader for MemoryStore {
    fn first_index(&self) -> LogIndex {
        self.lock().compacted.index + 1
    }

    fn last_index(&self) -> LogIndex {
        self.lock().last_index()
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.lock().term(index)
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        self.lock().read(low, high, max_bytes, out)
    }
}

/// A tiny key-value [`StateMachine`] kept in memory, for tests and examples.
///
/// A command `key=value` sets `key` and answers the previous value (empty if none); a command
/// without `=` is a no-op answering empty. [`query`](StateMachine::query) with a key answers
/// its value (empty if none). It is not durable: after a restart it starts empty and is
/// rebuilt from a snapshot and the log.
#[derive(Clone, Debug, Default)]
pub struct MemoryStateMachine {
    data: BTreeMap<Bytes, Bytes>,
}

impl MemoryStateMachine {
    /// An empty state machine that has applied nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.data.get(key)
    }

    fn apply_one(&mut self, cmd: &Bytes) -> Bytes {
        match cmd.iter().position(|&b| b == b'=') {
            Some(eq) => {
                let key = cmd.slice(..eq);
                let value = cmd.slice(eq + 1..);
                self.data.insert(key, value).unwrap_or_default()
            }
            None => Bytes::new(),
        }
    }

    fn encode(&self) -> Bytes {
        // Length-prefixed pairs; the format only has to round-trip within this type.
        let mut buf = BytesMut::new();
        buf.put_u64(self.data.len() as u64);
        for (k, v) in &self.data {
            buf.put_u32(k.len() as u32);
            buf.put_slice(k);
            buf.put_u32(v.len() as u32);
            buf.put_slice(v);
        }
        buf.freeze()
    }

    fn decode(mut data: Bytes) -> Result<BTreeMap<Bytes, Bytes>, StorageError> {
        fn take(data: &mut Bytes) -> Result<Bytes, StorageError> {
            if data.remaining() < 4 {
                return Err(truncated());
            }
            let len = data.get_u32() as usize;
            if data.remaining() < len {
                return Err(truncated());
            }
            Ok(data.split_to(len))
        }
        fn truncated() -> StorageError {
            StorageError::InvalidArgument("memory state machine snapshot is truncated".into())
        }
        if data.remaining() < 8 {
            return Err(truncated());
        }
        let count = data.get_u64();
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let k = take(&mut data)?;
            let v = take(&mut data)?;
            map.insert(k, v);
        }
        if data.has_remaining() {
            return Err(StorageError::InvalidArgument(format!(
                "memory state machine snapshot has {} trailing bytes",
                data.remaining()
            )));
        }
        Ok(map)
    }
}

impl StateMachine for MemoryStateMachine {
    type Error = StorageError;

    fn apply(
        &mut self,
        commands: &[Command],
        _applied_up_to: LogIndex,
    ) -> impl Future<Output = Result<Vec<Bytes>, StorageError>> + Send {
        ready(Ok(commands
            .iter()
            .map(|c| self.apply_one(&c.data))
            .collect()))
    }

    fn snapshot(&mut self) -> impl Future<Output = Result<Bytes, StorageError>> + Send {
        ready(Ok(self.encode()))
    }

    fn install_snapshot(
        &mut self,
        data: Bytes,
        _applied_up_to: LogIndex,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        ready(Self::decode(data).map(|map| self.data = map))
    }

    fn query(&self, request: Bytes) -> impl Future<Output = Result<Bytes, StorageError>> + Send {
        ready(Ok(self.data.get(&request).cloned().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ENTRY_OVERHEAD_BYTES, EntryPayload, Membership};

    fn blank(term: Term, index: LogIndex) -> Entry {
        Entry::new(term, index, EntryPayload::Blank)
    }

    fn append(store: &MemoryStore, entries: Vec<Entry>) -> Result<(), StorageError> {
        store.persist_now(&PersistRequest::new(None, entries, true))
    }

    /// Polls a future that the in-memory store completes at once.
    fn now<T>(future: impl Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => unreachable!("the in-memory store never waits"),
        }
    }

    #[test]
    fn append_overwrites_the_conflicting_suffix_and_refuses_gaps() {
        let store = MemoryStore::new();
        append(&store, vec![blank(1, 1), blank(1, 2), blank(1, 3)]).unwrap();
        append(&store, vec![blank(2, 2)]).unwrap();
        assert_eq!(store.last_index(), 2);
        assert_eq!(store.term(2).ok(), Some(2));
        assert!(matches!(
            append(&store, vec![blank(2, 4)]),
            Err(StorageError::InvalidArgument(_))
        ));
    }

    #[test]
    fn purging_keeps_the_term_of_the_last_purged_entry() {
        let store = MemoryStore::new();
        append(&store, vec![blank(1, 1), blank(2, 2), blank(3, 3)]).unwrap();
        store.purge_now(2).unwrap();
        assert_eq!(store.first_index(), 3);
        assert_eq!(store.term(2).ok(), Some(2));
        assert!(matches!(
            store.term(1),
            Err(StorageError::Compacted {
                index: 1,
                first_index: 3
            })
        ));
        let mut out = Vec::new();
        assert!(store.entries(2, 4, u64::MAX, &mut out).is_err());
        store.entries(3, 4, u64::MAX, &mut out).unwrap();
        assert_eq!(out, vec![blank(3, 3)]);
        // The async contract says the same.
        assert_eq!(now(store.read_entries(3, 4, u64::MAX)).ok(), Some(out));
    }

    #[test]
    fn entries_respect_the_byte_limit_but_return_at_least_one() {
        let store = MemoryStore::new();
        append(&store, vec![blank(1, 1), blank(1, 2), blank(1, 3)]).unwrap();
        let mut out = Vec::new();
        store.entries(1, 4, 1, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.clear();
        store
            .entries(1, 4, 2 * ENTRY_OVERHEAD_BYTES, &mut out)
            .unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_leaders_snapshot_replaces_the_log_and_clones_share_it() {
        let store = MemoryStore::new();
        let reader = store.clone();
        append(&store, vec![blank(1, 1), blank(1, 2)]).unwrap();
        let meta = SnapshotMeta {
            last_included: EntryId::new(3, 9),
            membership: Membership::new([1]),
        };
        store.reset_to_snapshot_now(&meta).unwrap();
        assert_eq!((reader.first_index(), reader.last_index()), (10, 9));
        assert_eq!(reader.term(9).ok(), Some(3));
        let state = now(reader.load_state()).unwrap();
        assert_eq!(state.snapshot_meta, Some(meta));
    }

    #[test]
    fn state_machine_applies_and_round_trips_a_snapshot() {
        let mut sm = MemoryStateMachine::new();
        let command = |index, data: &'static [u8]| Command {
            index,
            data: Bytes::from_static(data),
        };
        let out = now(sm.apply(
            &[command(2, b"a=1"), command(3, b"a=2"), command(4, b"x")],
            5,
        ))
        .unwrap();
        assert_eq!(out, vec![Bytes::new(), Bytes::from("1"), Bytes::new()]);
        assert_eq!(sm.applied_index(), 0, "not durable: it keeps no index");
        let snap = now(sm.snapshot()).unwrap();

        let mut other = MemoryStateMachine::new();
        now(other.install_snapshot(snap.clone(), 5)).unwrap();
        assert_eq!(now(other.query(Bytes::from("a"))).unwrap(), "2");
        assert_eq!(other.get(b"a").map(|v| &v[..]), Some(&b"2"[..]));
        assert_eq!(other.get(b"b"), None);
        assert!(
            now(other.install_snapshot(snap.slice(..5), 5)).is_err(),
            "a truncated snapshot is an error, not a panic"
        );
    }

    /// Snapshots decode at every length: each cut is an error, never a panic, and the edge
    /// cases of the format (no keys; an empty last value) round-trip.
    #[test]
    fn state_machine_snapshots_decode_at_every_length() {
        let empty = now(MemoryStateMachine::new().snapshot()).unwrap();
        let mut sm = MemoryStateMachine::new();
        now(sm.install_snapshot(empty, 1)).unwrap();
        assert_eq!(sm.get(b"a"), None);

        let set = |data: &'static [u8]| Command {
            index: 1,
            data: Bytes::from_static(data),
        };
        now(sm.apply(&[set(b"a=1"), set(b"b=")], 1)).unwrap();
        let snap = now(sm.snapshot()).unwrap();
        let mut other = MemoryStateMachine::new();
        now(other.install_snapshot(snap.clone(), 1)).unwrap();
        assert_eq!(other.get(b"b").map(|v| v.len()), Some(0));
        for cut in 0..snap.len() {
            let mut fresh = MemoryStateMachine::new();
            assert!(
                now(fresh.install_snapshot(snap.slice(..cut), 1)).is_err(),
                "cut at {cut}"
            );
        }
    }
}
