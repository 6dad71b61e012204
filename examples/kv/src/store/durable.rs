//! [`DurableKeyspace`]: the keys and their past versions in a redb file, so that a member
//! restarts from disk instead of rebuilding its state from a snapshot and the log.
//!
//! Each batch of applied commands ([`begin`](DurableKeyspace::begin) …
//! [`commit`](DurableKeyspace::commit)) writes its changes and the [`DurableState`] (the
//! applied log index, the revision, the compaction point) into one write transaction, as the
//! durable-state-machine contract asks (`dengine_core::store::StateMachine`): after a crash
//! the file holds the state as of some earlier batch, never part of one, and the runtime
//! resumes with the command after that batch's index. Batches applied within [`GROUP_FOR`]
//! share the transaction (reads go through it, so they see every applied batch), which is
//! then committed: a page that many batches change is written once. Commits are not synced
//! each time (the Raft log is: what a crash loses here is replayed from it); one every
//! [`SYNC_EVERY`] is, and the last one when the keyspace is dropped, so a restart replays at
//! most about that much of the log.
//!
//! Memory is redb's page cache, bounded by the cache size given to
//! [`open`](DurableKeyspace::open), not by the data set.
//!
//! Tables:
//! * `keys`: key → current record (create revision, mod revision, version, value);
//! * `history`: (key, mod revision) → a replaced version (the revision that replaced it,
//!   create revision, version, value);
//! * `replaced`: (revision that replaced it, key) → its mod revision: the order compaction
//!   drops past versions in;
//! * `meta`: the [`DurableState`], the file format, and the cluster state (auth, alarms).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use super::keyspace::{DurableState, Keyspace};
use super::record::{KeyRecord, PastVersion, le_word};
use crate::key_range::KeyBounds;

const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");
const HISTORY: TableDefinition<(&[u8], i64), &[u8]> = TableDefinition::new("history");
const REPLACED: TableDefinition<(i64, &[u8]), i64> = TableDefinition::new("replaced");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The layout of the file written by this build; a file of another is refused.
const FORMAT: u32 = 1;

/// At most this long between synced commits (see the module docs).
pub(crate) const SYNC_EVERY: Duration = Duration::from_millis(2000);

/// Batches applied within this long share one transaction (see the module docs). Longer
/// groups write a page that many puts change fewer times: at 256 clients on 10,000 keys,
/// 1 s instead of 200 ms (with [`SYNC_EVERY`] 2 s instead of 500 ms) bought 39% more puts
/// per second and cut the servers' CPU per put by a third (docs/benchmarks.md, 2026-12-04).
/// redb keeps a transaction's dirty pages within half of its page cache (it writes the rest
/// out early), so memory stays bounded however long the group is.
const GROUP_FOR: Duration = Duration::from_millis(1000);

/// The tables of the open write transaction. They are opened once per transaction, not per
/// operation: opening a table looks it up in redb's table tree and allocates, which cost
/// about 6% of a member's CPU at 256 clients when every put did it four times.
struct Tables<'t> {
    keys: redb::Table<'t, &'static [u8], &'static [u8]>,
    history: redb::Table<'t, (&'static [u8], i64), &'static [u8]>,
    replaced: redb::Table<'t, (i64, &'static [u8]), i64>,
}

self_cell::self_cell!(
    /// A write transaction with its [`Tables`] open.
    struct OpenWrite {
        owner: WriteTransaction,
        #[not_covariant]
        dependent: Tables,
    }
);

impl OpenWrite {
    /// Opens `txn`'s tables.
    fn open(txn: WriteTransaction) -> Result<Self, redb::Error> {
        Self::try_new(txn, |txn| {
            Ok(Tables {
                keys: txn.open_table(KEYS)?,
                history: txn.open_table(HISTORY)?,
                replaced: txn.open_table(REPLACED)?,
            })
        })
    }
}

/// Which of the [`Tables`] an operation uses.
trait Pick {
    type K: redb::Key + 'static;
    type V: redb::Value + 'static;
    /// The table's definition, to open it in a read transaction.
    const DEF: TableDefinition<'static, Self::K, Self::V>;
    fn pick<'b, 't>(tables: &'b Tables<'t>) -> &'b redb::Table<'t, Self::K, Self::V>;
    fn pick_mut<'b, 't>(tables: &'b mut Tables<'t>) -> &'b mut redb::Table<'t, Self::K, Self::V>;
}

/// The `keys` table.
struct Keys;
/// The `history` table.
struct History;
/// The `replaced` table.
struct Replaced;

impl Pick for Keys {
    type K = &'static [u8];
    type V = &'static [u8];
    const DEF: TableDefinition<'static, Self::K, Self::V> = KEYS;
    fn pick<'b, 't>(tables: &'b Tables<'t>) -> &'b redb::Table<'t, Self::K, Self::V> {
        &tables.keys
    }
    fn pick_mut<'b, 't>(tables: &'b mut Tables<'t>) -> &'b mut redb::Table<'t, Self::K, Self::V> {
        &mut tables.keys
    }
}

impl Pick for History {
    type K = (&'static [u8], i64);
    type V = &'static [u8];
    const DEF: TableDefinition<'static, Self::K, Self::V> = HISTORY;
    fn pick<'b, 't>(tables: &'b Tables<'t>) -> &'b redb::Table<'t, Self::K, Self::V> {
        &tables.history
    }
    fn pick_mut<'b, 't>(tables: &'b mut Tables<'t>) -> &'b mut redb::Table<'t, Self::K, Self::V> {
        &mut tables.history
    }
}

impl Pick for Replaced {
    type K = (i64, &'static [u8]);
    type V = i64;
    const DEF: TableDefinition<'static, Self::K, Self::V> = REPLACED;
    fn pick<'b, 't>(tables: &'b Tables<'t>) -> &'b redb::Table<'t, Self::K, Self::V> {
        &tables.replaced
    }
    fn pick_mut<'b, 't>(tables: &'b mut Tables<'t>) -> &'b mut redb::Table<'t, Self::K, Self::V> {
        &mut tables.replaced
    }
}

/// Keys and past versions read per step of a range scan (each step opens the table again).
const PAGE: usize = 512;

/// What [`DurableKeyspace::open`] found in the file.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The keyspace.
    pub(crate) keyspace: DurableKeyspace,
    /// What it covers (all zero for a new file).
    pub(crate) state: DurableState,
    /// The cluster state blob stored with it ([`DurableKeyspace::commit`]'s `cluster`), if
    /// any.
    pub(crate) cluster: Option<Vec<u8>>,
}

/// A keyspace in a redb file (see the module docs).
pub(crate) struct DurableKeyspace {
    db: Database,
    path: PathBuf,
    /// The open transaction: the batch being applied, and the batches applied since
    /// `opened` that were not committed yet.
    write: Option<OpenWrite>,
    /// When `write` began.
    opened: Instant,
    /// A batch is being applied: `write` holds changes whose state record is not written
    /// yet.
    in_batch: bool,
    /// The read transaction queries use between batches (begun at the first read after a
    /// commit).
    read: Mutex<Option<ReadTransaction>>,
    /// The first storage error since it was last taken.
    error: Mutex<Option<String>>,
    last_sync: Instant,
}

impl std::fmt::Debug for DurableKeyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableKeyspace")
            .field("path", &self.path)
            .field("in_batch", &self.write.is_some())
            .finish_non_exhaustive()
    }
}

impl DurableKeyspace {
    /// Opens (or creates) the keyspace file at `path` with a page cache of `cache_bytes`.
    /// A file of another format, or whose state record is damaged, is refused with a message
    /// naming it.
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<Opened, String> {
        let named = |e: &dyn std::fmt::Display| e.to_string();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| named(&e))?;
        }
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| named(&e))?;
        let txn = db.begin_write().map_err(|e| named(&e))?;
        let (state, cluster) = {
            let mut meta = txn.open_table(META).map_err(|e| named(&e))?;
            txn.open_table(KEYS).map_err(|e| named(&e))?;
            txn.open_table(HISTORY).map_err(|e| named(&e))?;
            txn.open_table(REPLACED).map_err(|e| named(&e))?;
            let format = meta
                .get("format")
                .map_err(|e| named(&e))?
                .map(|v| v.value().to_vec());
            match format {
                None => {
                    meta.insert("format", FORMAT.to_le_bytes().as_slice())
                        .map_err(|e| named(&e))?;
                }
                Some(f) if f == FORMAT.to_le_bytes() => {}
                Some(f) => {
                    return Err(named(&format!(
                        "a dengine-kv state file of format {f:?}, this build reads format \
                         {FORMAT}: run the build that wrote it, or remove the file to rebuild \
                         the state from the member's snapshot and log"
                    )));
                }
            }
            let state = match meta.get("state").map_err(|e| named(&e))? {
                None => DurableState::default(),
                Some(v) => DurableState::decode(v.value()).ok_or_else(|| {
                    named(
                        &"the state record is damaged: remove the file to rebuild the \
                            state from the member's snapshot and log",
                    )
                })?,
            };
            let cluster = meta
                .get("cluster")
                .map_err(|e| named(&e))?
                .map(|v| v.value().to_vec());
            (state, cluster)
        };
        txn.commit().map_err(|e| named(&e))?;
        Ok(Opened {
            keyspace: DurableKeyspace {
                db,
                path: path.to_path_buf(),
                write: None,
                opened: Instant::now(),
                in_batch: false,
                read: Mutex::new(None),
                error: Mutex::new(None),
                last_sync: Instant::now(),
            },
            state,
            cluster,
        })
    }

    /// Starts a batch: the writes until [`commit`](Self::commit) are one transaction.
    pub(crate) fn begin(&mut self) -> Result<(), String> {
        if self.write.is_none() {
            let txn = self.db.begin_write().map_err(|e| self.named(&e))?;
            self.write = Some(OpenWrite::open(txn).map_err(|e| self.named(&e))?);
            self.opened = Instant::now();
        }
        self.in_batch = true;
        Ok(())
    }

    /// Ends the batch: writes `state` (and `cluster`, the auth state and alarms, if given)
    /// with its changes, and commits the transaction if it is older than [`GROUP_FOR`] (else
    /// a later batch commits it; reads see it meanwhile, through the transaction) — synced
    /// if the last synced commit is older than [`SYNC_EVERY`] or `sync` is set (which also
    /// commits at once).
    pub(crate) fn commit(
        &mut self,
        state: &DurableState,
        cluster: Option<&[u8]>,
        sync: bool,
    ) -> Result<(), String> {
        if let Some(e) = self.take_error() {
            self.write = None; // aborted
            return Err(e);
        }
        self.begin()?;
        let Some(open) = self.write.take() else {
            return Err(self.named(&"no batch to commit"));
        };
        self.in_batch = false;
        let sync = sync || self.last_sync.elapsed() >= SYNC_EVERY;
        let recorded = (|| -> Result<(), redb::Error> {
            let mut meta = open.borrow_owner().open_table(META)?;
            meta.insert("state", state.encode().as_slice())?;
            if let Some(cluster) = cluster {
                meta.insert("cluster", cluster)?;
            }
            Ok(())
        })();
        if let Err(e) = recorded {
            return Err(self.named(&e));
        }
        if !sync && self.opened.elapsed() < GROUP_FOR {
            self.write = Some(open);
            return Ok(());
        }
        let mut txn = open.into_owner();
        let result = (|| -> Result<(), redb::Error> {
            if sync {
                txn.set_durability(Durability::Immediate)
                    .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                txn.set_quick_repair(true);
            } else {
                txn.set_durability(Durability::None)
                    .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            }
            txn.commit()?;
            Ok(())
        })();
        *self.lock_read() = None;
        result.map_err(|e| self.named(&e))?;
        if sync {
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    fn named(&self, e: &dyn std::fmt::Display) -> String {
        e.to_string()
    }

    fn lock_read(&self) -> std::sync::MutexGuard<'_, Option<ReadTransaction>> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `e` as the keyspace's error (the first one wins).
    fn fail(&self, e: impl std::fmt::Display) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e.to_string());
        }
    }

    /// Runs `read` on table `P`: the open batch's if there is one, else the read
    /// transaction's.
    fn read_table<P: Pick, T>(
        &self,
        read: impl FnOnce(&dyn ReadTable<P::K, P::V>) -> Result<T, redb::Error>,
    ) -> Option<T> {
        let result = if let Some(open) = &self.write {
            open.with_dependent(|_, tables| read(P::pick(tables)))
        } else {
            let mut slot = self.lock_read();
            if slot.is_none() {
                match self.db.begin_read() {
                    Ok(txn) => *slot = Some(txn),
                    Err(e) => {
                        self.fail(e);
                        return None;
                    }
                }
            }
            match slot.as_ref() {
                Some(txn) => txn
                    .open_table(P::DEF)
                    .map_err(redb::Error::from)
                    .and_then(|t| read(&t)),
                None => return None,
            }
        };
        result.map_err(|e| self.fail(e)).ok()
    }

    /// Runs `write` on table `P` of the open batch.
    fn write_table<P: Pick, T>(
        &mut self,
        write: impl FnOnce(&mut redb::Table<'_, P::K, P::V>) -> Result<T, redb::Error>,
    ) -> Option<T> {
        let Some(open) = &mut self.write else {
            self.fail("a write outside a batch (a bug: begin() first)");
            return None;
        };
        let result = open.with_dependent_mut(|_, tables| write(P::pick_mut(tables)));
        result.map_err(|e| self.fail(e)).ok()
    }

    /// Up to [`PAGE`] live keys after `after` within `bounds`.
    fn live_page(&self, bounds: (Bound<Bytes>, Bound<Bytes>)) -> Vec<(Bytes, KeyRecord)> {
        self.read_table::<Keys, _>(|t| {
            let mut out = Vec::new();
            let range = (
                bounds.0.as_ref().map(|b| b.as_ref()),
                bounds.1.as_ref().map(|b| b.as_ref()),
            );
            for item in t.range_of(range)? {
                let (k, v) = item?;
                let key = Bytes::copy_from_slice(k.value());
                let record = decode_record(v.value()).ok_or_else(|| damaged("keys", &key))?;
                out.push((key, record));
                if out.len() == PAGE {
                    break;
                }
            }
            Ok(out)
        })
        .unwrap_or_default()
    }

    /// Up to [`PAGE`] (key, mod revision) of past versions within `bounds`.
    fn history_page(
        &self,
        lower: Bound<(Bytes, i64)>,
        upper: Bound<(Bytes, i64)>,
    ) -> Vec<(Bytes, i64)> {
        self.read_table::<History, _>(|t| {
            let mut out = Vec::new();
            for item in t.range_of((bound_ref(&lower), bound_ref(&upper)))? {
                let (k, _) = item?;
                let (key, at) = k.value();
                out.push((Bytes::copy_from_slice(key), at));
                if out.len() == PAGE {
                    break;
                }
            }
            Ok(out)
        })
        .unwrap_or_default()
    }
}

impl DurableKeyspace {
    /// Up to [`PAGE`] entries of the `replaced` table within `bounds`, in order:
    /// (replaced at, key, mod revision).
    fn replaced_page(&self, bounds: ReplacedBounds<'_>) -> Vec<(i64, Bytes, i64)> {
        self.read_table::<Replaced, _>(|t| {
            let mut out = Vec::new();
            for item in t.range_of(bounds)? {
                let (k, v) = item?;
                let (at, key) = k.value();
                out.push((at, Bytes::copy_from_slice(key), v.value()));
                if out.len() == PAGE {
                    break;
                }
            }
            Ok(out)
        })
        .unwrap_or_default()
    }
}

/// The reads this keyspace makes, over a write or a read-only table (redb's
/// `ReadableTable` is not object-safe).
trait ReadTable<K: redb::Key + 'static, V: redb::Value + 'static> {
    fn get_value(
        &self,
        key: <K as redb::Value>::SelfType<'_>,
    ) -> Result<Option<redb::AccessGuard<'_, V>>, redb::Error>;
    fn count(&self) -> Result<u64, redb::Error>;
    fn range_of<'a>(
        &'a self,
        bounds: (
            Bound<<K as redb::Value>::SelfType<'a>>,
            Bound<<K as redb::Value>::SelfType<'a>>,
        ),
    ) -> Result<redb::Range<'a, K, V>, redb::Error>;
}

impl<K, V, T> ReadTable<K, V> for T
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
    T: ReadableTable<K, V>,
{
    fn get_value(
        &self,
        key: <K as redb::Value>::SelfType<'_>,
    ) -> Result<Option<redb::AccessGuard<'_, V>>, redb::Error> {
        Ok(self.get(key)?)
    }

    fn count(&self) -> Result<u64, redb::Error> {
        Ok(self.len()?)
    }

    fn range_of<'a>(
        &'a self,
        bounds: (
            Bound<<K as redb::Value>::SelfType<'a>>,
            Bound<<K as redb::Value>::SelfType<'a>>,
        ),
    ) -> Result<redb::Range<'a, K, V>, redb::Error> {
        Ok(self.range::<<K as redb::Value>::SelfType<'a>>(bounds)?)
    }
}

fn bound_ref(b: &Bound<(Bytes, i64)>) -> Bound<(&[u8], i64)> {
    match b {
        Bound::Included((k, r)) => Bound::Included((k.as_ref(), *r)),
        Bound::Excluded((k, r)) => Bound::Excluded((k.as_ref(), *r)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn damaged(table: &str, key: &[u8]) -> redb::Error {
    redb::Error::Corrupted(format!(
        "damaged record in table {table} for key {:?}",
        String::from_utf8_lossy(key)
    ))
}

fn encode_record(r: &KeyRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + r.value.len());
    out.extend_from_slice(&r.create_revision.to_le_bytes());
    out.extend_from_slice(&r.mod_revision.to_le_bytes());
    out.extend_from_slice(&r.version.to_le_bytes());
    out.extend_from_slice(&r.value);
    out
}

fn decode_record(bytes: &[u8]) -> Option<KeyRecord> {
    let word = |i: usize| le_word(bytes, i).map(i64::from_le_bytes);
    Some(KeyRecord {
        create_revision: word(0)?,
        mod_revision: word(8)?,
        version: word(16)?,
        value: Bytes::copy_from_slice(bytes.get(24..)?),
    })
}

/// A past version as the history table keeps it (its mod revision is in the table's key).
fn encode_past(p: &PastVersion) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + p.record.value.len());
    out.extend_from_slice(&p.superseded_at.to_le_bytes());
    out.extend_from_slice(&p.record.create_revision.to_le_bytes());
    out.extend_from_slice(&p.record.version.to_le_bytes());
    out.extend_from_slice(&p.record.value);
    out
}

fn decode_past(mod_revision: i64, bytes: &[u8]) -> Option<PastVersion> {
    let word = |i: usize| le_word(bytes, i).map(i64::from_le_bytes);
    Some(PastVersion {
        superseded_at: word(0)?,
        record: KeyRecord {
            create_revision: word(8)?,
            mod_revision,
            version: word(16)?,
            value: Bytes::copy_from_slice(bytes.get(24..)?),
        },
    })
}

/// Bounds on the `replaced` table's (replaced at, key).
type ReplacedBounds<'a> = (Bound<(i64, &'a [u8])>, Bound<(i64, &'a [u8])>);

/// Owned bounds on the history table's (key, mod revision).
type HistoryBounds = (Bound<(Bytes, i64)>, Bound<(Bytes, i64)>);

/// A bound on keys, owned, for a scan that resumes page by page.
fn owned(b: Bound<&[u8]>) -> Bound<Bytes> {
    b.map(Bytes::copy_from_slice)
}

/// The history table's bounds for the keys within `bounds`: every version of those keys.
fn history_bounds(bounds: KeyBounds<'_>) -> HistoryBounds {
    let lower = match bounds.0 {
        Bound::Included(k) => Bound::Included((Bytes::copy_from_slice(k), i64::MIN)),
        Bound::Excluded(k) => Bound::Excluded((Bytes::copy_from_slice(k), i64::MAX)),
        Bound::Unbounded => Bound::Unbounded,
    };
    let upper = match bounds.1 {
        Bound::Included(k) => Bound::Included((Bytes::copy_from_slice(k), i64::MAX)),
        Bound::Excluded(k) => Bound::Excluded((Bytes::copy_from_slice(k), i64::MIN)),
        Bound::Unbounded => Bound::Unbounded,
    };
    (lower, upper)
}

impl Keyspace for DurableKeyspace {
    fn get(&self, key: &[u8]) -> Option<KeyRecord> {
        self.read_table::<Keys, _>(|t| {
            t.get_value(key)?
                .map(|v| decode_record(v.value()).ok_or_else(|| damaged("keys", key)))
                .transpose()
        })
        .flatten()
    }

    fn live<'a>(
        &'a self,
        bounds: KeyBounds<'a>,
    ) -> Box<dyn Iterator<Item = (Bytes, KeyRecord)> + 'a> {
        let upper = owned(bounds.1);
        let mut lower = owned(bounds.0);
        let mut page = std::collections::VecDeque::new();
        let mut done = false;
        Box::new(std::iter::from_fn(move || {
            if page.is_empty() && !done {
                let got = self.live_page((lower.clone(), upper.clone()));
                done = got.len() < PAGE;
                if let Some((last, _)) = got.last() {
                    lower = Bound::Excluded(last.clone());
                }
                page.extend(got);
            }
            page.pop_front()
        }))
    }

    fn keys_with_history<'a>(
        &'a self,
        bounds: KeyBounds<'a>,
    ) -> Box<dyn Iterator<Item = Bytes> + 'a> {
        let (mut lower, upper) = history_bounds(bounds);
        let mut page = std::collections::VecDeque::new();
        let mut done = false;
        let mut last_key: Option<Bytes> = None;
        Box::new(std::iter::from_fn(move || {
            loop {
                if page.is_empty() {
                    if done {
                        return None;
                    }
                    let got = self.history_page(lower.clone(), upper.clone());
                    done = got.len() < PAGE;
                    if let Some((key, _)) = got.last() {
                        // Resume after every version of the last key seen.
                        lower = Bound::Excluded((key.clone(), i64::MAX));
                    }
                    page.extend(got);
                    if page.is_empty() {
                        return None;
                    }
                }
                let (key, _) = page.pop_front()?;
                if last_key.as_ref() != Some(&key) {
                    last_key = Some(key.clone());
                    return Some(key);
                }
            }
        }))
    }

    fn history(&self, key: &[u8]) -> Vec<PastVersion> {
        self.read_table::<History, _>(|t| {
            let mut out = Vec::new();
            let range = (
                Bound::Included((key, i64::MIN)),
                Bound::Included((key, i64::MAX)),
            );
            for item in t.range_of(range)? {
                let (k, v) = item?;
                let (_, mod_revision) = k.value();
                out.push(
                    decode_past(mod_revision, v.value()).ok_or_else(|| damaged("history", key))?,
                );
            }
            Ok(out)
        })
        .unwrap_or_default()
    }

    fn past_in_order(&self) -> Box<dyn Iterator<Item = (Bytes, PastVersion)> + '_> {
        let mut lower: Bound<(i64, Bytes)> = Bound::Unbounded;
        let mut page = std::collections::VecDeque::new();
        let mut done = false;
        Box::new(std::iter::from_fn(move || {
            if page.is_empty() && !done {
                let low = match &lower {
                    Bound::Excluded((at, k)) => Bound::Excluded((*at, k.as_ref())),
                    _ => Bound::Unbounded,
                };
                let got = self.replaced_page((low, Bound::Unbounded));
                done = got.len() < PAGE;
                if let Some((at, key, _)) = got.last() {
                    lower = Bound::Excluded((*at, key.clone()));
                }
                page.extend(got);
            }
            let (_, key, mod_revision) = page.pop_front()?;
            let past = self
                .read_table::<History, _>(|t| {
                    t.get_value((key.as_ref(), mod_revision))?
                        .map(|v| {
                            decode_past(mod_revision, v.value())
                                .ok_or_else(|| damaged("history", &key))
                        })
                        .transpose()
                })
                .flatten();
            match past {
                Some(p) => Some((key, p)),
                None => {
                    self.fail(damaged("replaced", &key));
                    None
                }
            }
        }))
    }

    fn live_count(&self) -> u64 {
        self.read_table::<Keys, _>(|t| t.count()).unwrap_or(0)
    }

    fn past_count(&self) -> u64 {
        self.read_table::<Replaced, _>(|t| t.count()).unwrap_or(0)
    }

    fn insert(&mut self, key: Bytes, record: KeyRecord) {
        self.write_table::<Keys, _>(|t| {
            t.insert(key.as_ref(), encode_record(&record).as_slice())?;
            Ok(())
        });
    }

    fn remove(&mut self, key: &[u8]) -> Option<KeyRecord> {
        self.write_table::<Keys, _>(|t| {
            t.remove(key)?
                .map(|v| decode_record(v.value()).ok_or_else(|| damaged("keys", key)))
                .transpose()
        })
        .flatten()
    }

    fn push_past(&mut self, key: Bytes, past: PastVersion) {
        self.write_table::<History, _>(|t| {
            t.insert(
                (key.as_ref(), past.record.mod_revision),
                encode_past(&past).as_slice(),
            )?;
            Ok(())
        });
        self.write_table::<Replaced, _>(|t| {
            t.insert((past.superseded_at, key.as_ref()), past.record.mod_revision)?;
            Ok(())
        });
    }

    fn drop_past_through(&mut self, revision: i64, dropped: &mut dyn FnMut(&[u8], &KeyRecord)) {
        // Every (superseded_at, key) with superseded_at <= revision: the empty key is the
        // smallest, so this bound excludes exactly the later ones.
        let after = revision.saturating_add(1);
        loop {
            let page = self.replaced_page((Bound::Unbounded, Bound::Excluded((after, &b""[..]))));
            if page.is_empty() {
                return;
            }
            let full = page.len() == PAGE;
            let removed: Vec<(Bytes, KeyRecord)> = self
                .write_table::<Replaced, _>(|replaced| {
                    for (at, key, _) in &page {
                        replaced.remove((*at, key.as_ref()))?;
                    }
                    Ok(())
                })
                .and_then(|()| {
                    self.write_table::<History, _>(|t| {
                        let mut out = Vec::new();
                        for (_, key, mod_revision) in &page {
                            let Some(v) = t.remove((key.as_ref(), *mod_revision))? else {
                                return Err(damaged("replaced", key));
                            };
                            let past = decode_past(*mod_revision, v.value())
                                .ok_or_else(|| damaged("history", key))?;
                            out.push((key.clone(), past.record));
                        }
                        Ok(out)
                    })
                })
                .unwrap_or_default();
            for (key, record) in &removed {
                dropped(key, record);
            }
            if !full || removed.len() != page.len() {
                return;
            }
        }
    }

    fn clear(&mut self) {
        let Some(open) = self.write.take() else {
            self.fail("clear outside a batch (a bug: begin() first)");
            return;
        };
        // The tables are closed (the transaction taken back) to delete them, then reopened.
        let txn = open.into_owner();
        let result = (|| -> Result<(), redb::Error> {
            txn.delete_table(KEYS)?;
            txn.delete_table(HISTORY)?;
            txn.delete_table(REPLACED)?;
            Ok(())
        })();
        if let Err(e) = result {
            self.fail(e);
        }
        match OpenWrite::open(txn) {
            Ok(open) => self.write = Some(open),
            // The transaction is gone with the error: the batch fails (take_error).
            Err(e) => self.fail(e),
        }
    }

    fn take_error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn location(&self) -> PathBuf {
        self.path.clone()
    }

    fn begin_batch(&mut self) -> Result<(), String> {
        self.begin()
    }

    fn commit_batch(
        &mut self,
        state: &DurableState,
        cluster: Option<&[u8]>,
        sync: bool,
    ) -> Result<(), String> {
        self.commit(state, cluster, sync)
    }

    fn abort_batch(&mut self) {
        self.write = None;
        self.take_error();
    }
}

impl Drop for DurableKeyspace {
    /// A synced empty commit makes every unsynced one durable: a clean stop replays nothing.
    fn drop(&mut self) {
        // The open transaction holds whole batches with their state record, unless a batch
        // was left unfinished (a failed apply): then it is abandoned, replayed from the log.
        let open = self
            .write
            .take()
            .filter(|_| !self.in_batch)
            .map(OpenWrite::into_owner);
        *self.lock_read() = None;
        let synced = open
            .map_or_else(|| self.db.begin_write(), Ok)
            .map(|mut txn| {
                let _ = txn.set_durability(Durability::Immediate);
                txn.set_quick_repair(true);
                txn.commit()
            });
        match synced {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(file = %self.path.display(), "could not sync the state file at stop: {e}")
            }
            Err(e) => {
                tracing::warn!(file = %self.path.display(), "could not sync the state file at stop: {e}")
            }
        }
    }
}
