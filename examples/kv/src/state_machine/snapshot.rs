//! The kv snapshot (`StoreSnapshot`, command.proto) as a stream: written one key at a time
//! into any writer (the runtime's snapshot file), and read back field by field from a
//! [`SnapshotData`] (which may lie in a file), so that neither a leader building a snapshot
//! nor a follower installing one holds the store's data whole in memory.
//!
//! The head (every field but the keys and the history: format, applied index, revisions,
//! auth, alarms) is written first, but a reader does not count on it: protobuf allows fields
//! in any order, so the head, the keys and the history are each read in a pass of their own
//! that skips the other fields.

use std::io::{self, BufReader, Read as _, Write};
use std::marker::PhantomData;

use std::sync::Arc;

use dengine_core::LogIndex;
use dengine_core::store::{
    SnapshotData, SnapshotIoError, SnapshotReader, SnapshotView, StorageError,
};
use prost::Message as _;

use super::{KvStateMachine, OLDEST_SNAPSHOT_FORMAT, SNAPSHOT_FORMAT, corrupt_snapshot};
use crate::auth::AuthStore;
use crate::proto::dengine::kv::v1::{PastKeyValue, StoreSnapshot};
use crate::proto::mvccpb::KeyValue;
use crate::store::{self, KvStore};

/// The field numbers of `StoreSnapshot.kvs` and `StoreSnapshot.history` (command.proto).
pub(super) const KVS_TAG: u32 = 6;
pub(super) const HISTORY_TAG: u32 = 10;
/// `StoreSnapshot.key_count`, `history_count` and `complete`, written last.
const KEY_COUNT_TAG: u32 = 11;
const HISTORY_COUNT_TAG: u32 = 12;
const COMPLETE_TAG: u32 = 13;

/// Bytes gathered before a write to the output.
const WRITE_BATCH: usize = 256 << 10;
/// Buffer of the reader of each pass.
const READ_BUFFER: usize = 256 << 10;

impl KvStateMachine {
    /// Writes the state as a [`StoreSnapshot`] into `out`, one key at a time: the keys and
    /// past versions are never all decoded or encoded at once.
    pub(super) fn write_snapshot_into(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut stream = Stream::start(&self.snapshot_head(), out);
        for kv in self.store.key_values() {
            stream.key(&kv)?;
        }
        for (kv, superseded_revision) in self.store.past_versions() {
            stream.past(kv, superseded_revision)?;
        }
        stream.finish()
    }

    /// A frozen view of the state that writes the same snapshot as
    /// [`write_snapshot_into`](Self::write_snapshot_into) on another thread, while commands
    /// go on being applied; `None` for a store in memory.
    pub(super) fn frozen_view(&mut self) -> Option<Result<KvView, StorageError>> {
        let head = self.snapshot_head();
        let leases = self.store.leases().clone();
        let frozen = match self.store.data_mut().freeze()? {
            Ok(frozen) => frozen,
            Err(e) => return Some(Err(self.store_error("freezing a view of", e))),
        };
        Some(Ok(KvView {
            head,
            leases,
            frozen,
        }))
    }

    /// Every field of the snapshot but the keys and the history.
    fn snapshot_head(&self) -> StoreSnapshot {
        StoreSnapshot {
            format: SNAPSHOT_FORMAT,
            applied_index: self.applied,
            // Before format 3 the snapshot also held the entry's term and the cluster
            // configuration; the runtime keeps those now.
            applied_term: 0,
            revision: self.store.revision(),
            compact_revision: self.store.compact_revision(),
            kvs: Vec::new(),
            history: Vec::new(),
            membership: None,
            auth: Some(self.auth.to_snapshot()),
            alarms: self.alarm_members(0, 0),
            leases: self.store.leases().to_states(),
            // Written after the keys and history (see `Stream`).
            key_count: 0,
            history_count: 0,
            complete: false,
        }
    }

    /// Replaces the state with a snapshot, read field by field from `data` (which may lie in
    /// a file): a durable store is refilled in one transaction, without the snapshot or the
    /// store ever held whole in memory. A damaged snapshot leaves the state as it was.
    pub(super) fn install(
        &mut self,
        data: &SnapshotData,
        applied_up_to: LogIndex,
    ) -> Result<(), StorageError> {
        let index = applied_up_to;
        let mut head = read_head(data)
            .map_err(|e| corrupt_snapshot(index, format!("undecodable kv snapshot: {e}")))?;
        if !(OLDEST_SNAPSHOT_FORMAT..=SNAPSHOT_FORMAT).contains(&head.format) {
            return Err(StorageError::FormatMismatch {
                path: "<kv snapshot>".into(),
                found: format!("dengine-kv snapshot format {}", head.format),
                expected: format!(
                    "dengine-kv snapshot format {OLDEST_SNAPSHOT_FORMAT} to {SNAPSHOT_FORMAT}"
                ),
            });
        }
        if head.applied_index != index {
            return Err(corrupt_snapshot(
                index,
                format!(
                    "kv snapshot covers entry {} but the runtime installs it as {index}",
                    head.applied_index
                ),
            ));
        }
        if head.format >= 5 && !head.complete {
            return Err(corrupt_snapshot(
                index,
                "kv snapshot cut short: its closing `complete` mark is missing".into(),
            ));
        }
        // The keys and the history, each decoded one at a time in a pass of its own.
        let mut kvs = Scan::<KeyValue>::new(data, KVS_TAG);
        let mut past = Scan::<PastKeyValue>::new(data, HISTORY_TAG);
        // A durable store is refilled in one transaction (the old state stays until it
        // commits); one in memory is rebuilt apart, so a refused snapshot leaves it whole.
        let durable = self.store.data().is_durable();
        // What the open transaction holds is committed first: a refused snapshot must leave
        // the file as the state is.
        self.commit_batch(true)?;
        let before = self.store.durable_state(self.applied);
        let mut data = if durable {
            self.store.take_data()
        } else {
            Box::new(store::MemoryKeyspace::default())
        };
        if let Err(e) = data.begin_batch() {
            let error = StorageError::Backend {
                path: data.location(),
                op: "starting a snapshot install in",
                detail: e,
            };
            self.store = KvStore::reopen(data, &before);
            return Err(error);
        }
        let restored = KvStore::restore(
            data,
            &mut kvs,
            past.by_ref()
                .map(|p| (p.kv.unwrap_or_default(), p.superseded_revision)),
            head.revision,
            head.compact_revision,
        );
        // A field that failed to decode ended its pass early: the snapshot is damaged even
        // when what was read before it made a valid store.
        let mut undecodable = kvs.error.take().or(past.error.take());
        let counted = (kvs.count, past.count);
        if undecodable.is_none()
            && head.format >= 5
            && counted != (head.key_count, head.history_count)
        {
            undecodable = Some(format!(
                "it holds {} keys and {} past versions but says {} and {}",
                counted.0, counted.1, head.key_count, head.history_count
            ));
        }
        let leases = std::mem::take(&mut head.leases);
        let refused = match (restored, undecodable) {
            (Ok(mut store), None) => match store.set_leases(leases) {
                Ok(()) => {
                    self.store = store;
                    None
                }
                Err(e) => Some((format!("damaged lease table: {e}"), store.take_data())),
            },
            (Ok(mut store), Some(e)) => {
                Some((format!("undecodable kv snapshot: {e}"), store.take_data()))
            }
            (Err((e, data)), _) => Some((e.0, data)),
        };
        if let Some((detail, mut data)) = refused {
            data.abort_batch();
            if durable {
                self.store = KvStore::reopen(data, &before);
            }
            return Err(corrupt_snapshot(index, detail));
        }
        // Format 1 has no auth state: auth off, no users, as the cluster was.
        self.auth = Arc::new(head.auth.map(AuthStore::from_snapshot).unwrap_or_default());
        self.auth_hub.publish(self.auth.clone());
        self.alarms = head.alarms.iter().map(|a| (a.member_id, a.alarm)).collect();
        self.publish_leases();
        self.applied = index;
        self.persisted_cluster = None;
        self.commit_batch(true)?;
        // Watchers following the hub may resume from a revision before the snapshot: rebuild
        // the events of the revisions after the compaction point (at the compaction point
        // itself its deletes are gone) from the history, as many as the hub can hold (each
        // revision has at least one event). With nobody following, the hub would drop them
        // at its next publish: none are rebuilt, and a watcher that comes later is served
        // from the MVCC history.
        let (from, replayed) = if self.hub.is_followed() {
            let window = i64::try_from(self.hub.config().max_history_events).unwrap_or(i64::MAX);
            let from = self
                .store
                .compact_revision()
                .saturating_add(1)
                .max(head.revision.saturating_sub(window).saturating_add(1));
            (from, self.store.events_since(from))
        } else {
            (head.revision.saturating_add(1), Vec::new())
        };
        self.hub
            .reset(head.revision, head.compact_revision, from, replayed);
        self.hub.set_usage(self.store.size_bytes(), self.no_space());
        Ok(())
    }
}

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// The top-level fields of an encoded message, read one at a time from a [`SnapshotData`].
struct Fields {
    reader: BufReader<SnapshotReader>,
    pos: u64,
    len: u64,
}

impl Fields {
    fn new(data: &SnapshotData) -> Self {
        Fields {
            reader: BufReader::with_capacity(READ_BUFFER, data.reader()),
            pos: 0,
            len: data.len(),
        }
    }

    fn byte(&mut self) -> Result<u8, String> {
        let mut one = [0u8; 1];
        self.reader
            .read_exact(&mut one)
            .map_err(|e| format!("at byte {}: {e}", self.pos))?;
        self.pos += 1;
        Ok(one[0])
    }

    /// A varint, its bytes appended to `raw` when given.
    fn varint(&mut self, mut raw: Option<&mut Vec<u8>>) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if let Some(raw) = raw.as_deref_mut() {
                raw.push(b);
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!(
            "a varint longer than 10 bytes before byte {}",
            self.pos
        ))
    }

    /// The next field's number and wire type, its key's bytes appended to `raw` when given;
    /// `None` at the end.
    fn key(&mut self, raw: Option<&mut Vec<u8>>) -> Result<Option<(u32, u8)>, String> {
        if self.pos >= self.len {
            return Ok(None);
        }
        let key = self.varint(raw)?;
        let tag =
            u32::try_from(key >> 3).map_err(|_| format!("field number {} too large", key >> 3))?;
        Ok(Some((tag, (key & 7) as u8)))
    }

    /// The length of a length-delimited value, checked against what is left.
    fn length(&mut self, raw: Option<&mut Vec<u8>>) -> Result<u64, String> {
        let n = self.varint(raw)?;
        if n > self.len - self.pos {
            return Err(format!(
                "a field of {n} bytes at byte {}, past the end ({} bytes)",
                self.pos, self.len
            ));
        }
        Ok(n)
    }

    fn take(&mut self, n: u64, out: &mut Vec<u8>) -> Result<(), String> {
        let start = out.len();
        let n_usize = usize::try_from(n).map_err(|_| format!("a field of {n} bytes"))?;
        out.resize(start + n_usize, 0);
        self.reader
            .read_exact(&mut out[start..])
            .map_err(|e| format!("at byte {}: {e}", self.pos))?;
        self.pos += n;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        if n > self.len - self.pos {
            return Err(format!("a value past the end at byte {}", self.pos));
        }
        let step = i64::try_from(n).map_err(|_| format!("a field of {n} bytes"))?;
        self.reader
            .seek_relative(step)
            .map_err(|e| format!("at byte {}: {e}", self.pos))?;
        self.pos += n;
        Ok(())
    }

    /// Passes over a value of wire type `wire`, its bytes appended to `raw` when given.
    fn value(&mut self, wire: u8, raw: Option<&mut Vec<u8>>) -> Result<(), String> {
        let fixed = match wire {
            VARINT => return self.varint(raw).map(drop),
            FIXED64 => 8,
            FIXED32 => 4,
            LEN => {
                let mut raw = raw;
                let n = self.length(raw.as_deref_mut())?;
                return match raw {
                    Some(raw) => self.take(n, raw),
                    None => self.skip(n),
                };
            }
            other => return Err(format!("wire type {other} at byte {}", self.pos)),
        };
        match raw {
            Some(raw) => self.take(fixed, raw),
            None => self.skip(fixed),
        }
    }
}

/// The snapshot's head: every field but the keys and the history.
pub(super) fn read_head(data: &SnapshotData) -> Result<StoreSnapshot, String> {
    let mut fields = Fields::new(data);
    let mut head = Vec::new();
    loop {
        let mark = head.len();
        let Some((tag, wire)) = fields.key(Some(&mut head))? else {
            break;
        };
        if (tag == KVS_TAG || tag == HISTORY_TAG) && wire == LEN {
            head.truncate(mark);
            fields.value(wire, None)?;
        } else {
            fields.value(wire, Some(&mut head))?;
        }
    }
    StoreSnapshot::decode(&head[..]).map_err(|e| e.to_string())
}

/// The values of one repeated message field of the snapshot, decoded one at a time. The
/// iteration ends at the first problem, kept in [`error`](Self::error): check it after.
pub(super) struct Scan<M> {
    fields: Fields,
    tag: u32,
    buf: Vec<u8>,
    /// What stopped the iteration early, if anything.
    pub(super) error: Option<String>,
    /// How many values were decoded.
    pub(super) count: u64,
    _message: PhantomData<M>,
}

impl<M> Scan<M> {
    pub(super) fn new(data: &SnapshotData, tag: u32) -> Self {
        Scan {
            fields: Fields::new(data),
            tag,
            buf: Vec::new(),
            error: None,
            count: 0,
            _message: PhantomData,
        }
    }
}

impl<M: prost::Message + Default> Scan<M> {
    fn next_value(&mut self) -> Result<Option<M>, String> {
        while let Some((tag, wire)) = self.fields.key(None)? {
            if tag != self.tag || wire != LEN {
                self.fields.value(wire, None)?;
                continue;
            }
            let n = self.fields.length(None)?;
            self.buf.clear();
            self.fields.take(n, &mut self.buf)?;
            return M::decode(&self.buf[..])
                .map(Some)
                .map_err(|e| format!("field {tag}: {e}"));
        }
        Ok(None)
    }
}

impl<M: prost::Message + Default> Iterator for Scan<M> {
    type Item = M;

    fn next(&mut self) -> Option<M> {
        if self.error.is_some() {
            return None;
        }
        match self.next_value() {
            Ok(value) => {
                self.count += u64::from(value.is_some());
                value
            }
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

/// A snapshot being written: the head first, then the keys and the history one at a time,
/// gathered into writes of [`WRITE_BATCH`] bytes, and the closing counts. The fields come in
/// another order than `encode_to_vec` writes them, which protobuf readers accept.
struct Stream<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
    key_count: u64,
    history_count: u64,
}

impl<'a> Stream<'a> {
    fn start(head: &StoreSnapshot, out: &'a mut dyn Write) -> Self {
        let mut buf = Vec::with_capacity(WRITE_BATCH + 4096);
        head.encode_raw(&mut buf);
        Stream {
            out,
            buf,
            key_count: 0,
            history_count: 0,
        }
    }

    fn key(&mut self, kv: &KeyValue) -> io::Result<()> {
        prost::encoding::message::encode(KVS_TAG, kv, &mut self.buf);
        self.key_count += 1;
        self.flush(false)
    }

    fn past(&mut self, kv: KeyValue, superseded_revision: i64) -> io::Result<()> {
        let past = PastKeyValue {
            kv: Some(kv),
            superseded_revision,
        };
        prost::encoding::message::encode(HISTORY_TAG, &past, &mut self.buf);
        self.history_count += 1;
        self.flush(false)
    }

    /// The closing fields: what a reader counts, and the mark that nothing was cut.
    fn finish(mut self) -> io::Result<()> {
        prost::encoding::uint64::encode(KEY_COUNT_TAG, &self.key_count, &mut self.buf);
        prost::encoding::uint64::encode(HISTORY_COUNT_TAG, &self.history_count, &mut self.buf);
        prost::encoding::bool::encode(COMPLETE_TAG, &true, &mut self.buf);
        self.flush(true)
    }

    fn flush(&mut self, force: bool) -> io::Result<()> {
        if force || self.buf.len() >= WRITE_BATCH {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// [`KvStateMachine::frozen_view`]: the head and the leases as of the view, and the
/// keyspace's frozen view.
pub(super) struct KvView {
    head: StoreSnapshot,
    leases: store::Leases,
    frozen: Box<dyn store::FrozenKeyspace>,
}

impl SnapshotView for KvView {
    fn write_to(self: Box<Self>, out: &mut (dyn Write + Send)) -> Result<(), SnapshotIoError> {
        let KvView {
            head,
            leases,
            frozen,
        } = *self;
        let mut stream = Stream::start(&head, out);
        frozen.each_live(&mut |key, record| {
            let mut kv = store::to_kv(&key, &record);
            kv.lease = leases.lease_of(&key, record.mod_revision);
            stream.key(&kv)
        })?;
        frozen.each_past(&mut |key, past| {
            stream.past(store::to_kv(&key, &past.record), past.superseded_at)
        })?;
        stream.finish()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::dengine::kv::v1::PastKeyValue;
    use crate::proto::mvccpb::KeyValue;

    fn kv(key: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            mod_revision: rev,
            create_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    /// A snapshot encoded by prost in field-number order (keys before the head's later
    /// fields, interleaved nowhere) and one with its fields shuffled read back the same.
    #[test]
    fn fields_in_any_order_read_back_and_damage_is_an_error() {
        let whole = StoreSnapshot {
            format: SNAPSHOT_FORMAT,
            applied_index: 9,
            revision: 7,
            compact_revision: 2,
            kvs: vec![kv("a", 5), kv("b", 7)],
            history: vec![PastKeyValue {
                kv: Some(kv("a", 3)),
                superseded_revision: 5,
            }],
            ..Default::default()
        };
        let encoded = whole.encode_to_vec();
        // History first, then a key, the head, the other key.
        let mut shuffled = Vec::new();
        prost::encoding::message::encode(HISTORY_TAG, &whole.history[0], &mut shuffled);
        prost::encoding::message::encode(KVS_TAG, &whole.kvs[1], &mut shuffled);
        StoreSnapshot {
            kvs: Vec::new(),
            history: Vec::new(),
            ..whole.clone()
        }
        .encode_raw(&mut shuffled);
        prost::encoding::message::encode(KVS_TAG, &whole.kvs[0], &mut shuffled);
        for (bytes, kvs) in [
            (encoded, whole.kvs.clone()),
            (shuffled, vec![whole.kvs[1].clone(), whole.kvs[0].clone()]),
        ] {
            let data = SnapshotData::from(bytes.clone());
            let head = read_head(&data).unwrap();
            assert_eq!(
                (head.applied_index, head.revision, head.compact_revision),
                (9, 7, 2)
            );
            assert!(head.kvs.is_empty() && head.history.is_empty());
            let mut scan = Scan::<KeyValue>::new(&data, KVS_TAG);
            assert_eq!(scan.by_ref().collect::<Vec<_>>(), kvs);
            assert_eq!(scan.error, None);
            let mut past = Scan::<PastKeyValue>::new(&data, HISTORY_TAG);
            assert_eq!(past.by_ref().collect::<Vec<_>>(), whole.history);
            assert_eq!(past.error, None);
            // Cut anywhere inside the last field: an error, never a silent short read.
            let cut = SnapshotData::from(bytes[..bytes.len() - 1].to_vec());
            let mut scan = Scan::<KeyValue>::new(&cut, KVS_TAG);
            let mut past = Scan::<PastKeyValue>::new(&cut, HISTORY_TAG);
            scan.by_ref().for_each(drop);
            past.by_ref().for_each(drop);
            assert!(
                read_head(&cut).is_err() || scan.error.is_some() || past.error.is_some(),
                "a cut snapshot must not read back whole"
            );
        }
        // A length that runs past the end is refused before anything is allocated.
        let mut lying = Vec::new();
        prost::encoding::encode_key(
            KVS_TAG,
            prost::encoding::WireType::LengthDelimited,
            &mut lying,
        );
        prost::encoding::encode_varint(1 << 40, &mut lying);
        let data = SnapshotData::from(lying);
        let mut scan = Scan::<KeyValue>::new(&data, KVS_TAG);
        assert_eq!(scan.next(), None);
        assert!(scan.error.unwrap().contains("past the end"));
    }
}
