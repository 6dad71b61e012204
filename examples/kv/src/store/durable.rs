//! [`DurableKeyspace`]: the keys and their past versions in a redb file, so that a member
//! restarts from disk instead of rebuilding its state from a snapshot and the log.
//!
//! Each batch of applied commands ([`begin`](DurableKeyspace::begin) …
//! [`commit`](DurableKeyspace::commit)) writes its changes and the [`DurableState`] (the
//! applied log index, the revision, the compaction point) into one write transaction, as the
//! durable-state-machine contract asks (`dengine_core::store::StateMachine`): after a crash
//! the file holds the state as of some earlier batch, never part of one, and the runtime
//! resumes with the command after that batch's index. Batches share the transaction until
//! the group ends — at [`GROUP_FOR`] once it holds [`GROUP_CHANGES`] changes, else at
//! [`GROUP_AT_MOST`] — (reads go through it, so they see every applied batch); it is then
//! committed: a page that many batches change is written once. The group's commit is not
//! synced on the apply task (the Raft log is synced: what a crash loses here is replayed
//! from it) but by an empty synced commit on a thread of its own right after, which makes
//! it durable; so is the last one when the keyspace is dropped, and a restart replays at
//! most about one group of the log. While that sync runs (it holds redb's one write
//! transaction), batches are applied into memory and written into the next transaction
//! when it ends (`pending.rs`).
//!
//! Memory is redb's page cache, bounded by the cache size given to
//! [`open`](DurableKeyspace::open), not by the data set, and the past versions not written
//! yet: about [`RECENT_BYTES`] at most, and as much again while a sync writes the previous
//! group's (`recent.rs`).
//!
//! Tables:
//! * `keys`: key → current record (create revision, mod revision, version, value);
//! * `past`: (revision that replaced it, key) → a replaced version (mod revision, create
//!   revision, version, value). Its order is the order versions are replaced and compacted
//!   in, so both write at the ends of the tree. A version replaced during a group is kept
//!   in memory until the group is committed, and never written if a compaction drops it
//!   first (`recent.rs`);
//! * `meta`: the [`DurableState`], the file format, and the cluster state (auth, alarms).
//!
//! What finds a key's past versions, [`PastIndex`] (`index.rs`), is in memory (as etcd's key
//! index is): per key with kept versions, their (mod revision, replaced at), built from
//! `past` when the file is opened. Memory is therefore the page cache plus about 16 bytes
//! per kept past version and one copy of each key that has some (two if it may not be live)
//! — bounded by the history kept, which the auto-compaction bounds (10,000 revisions by
//! default).
//!
//! Format 1 kept the values in a (key, mod revision) table and the order in a small one, so
//! every put and every compacted version wrote a large entry at a random place of the tree.
//! Format 2 kept the index as a table too, `past_by_key`: (key, mod revision) → replaced at;
//! its inserts and removes, at random places of a tree, were about a tenth of a member's
//! CPU at 256 clients (docs/benchmarks.md, 2026-12-05). Files of both are converted when
//! opened.

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use super::keyspace::{DurableState, FrozenKeyspace, Keyspace};
use super::record::{KeyRecord, PastVersion, le_word};
use crate::key_range::KeyBounds;
use index::PastIndex;
use pending::Pending;
use recent::RecentPast;

mod index;
mod pending;
mod recent;

const KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("keys");
const PAST: TableDefinition<(i64, &[u8]), &[u8]> = TableDefinition::new("past");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Format 1's past versions: (key, mod revision) → (replaced at, create revision, version,
/// value).
const FORMAT_1_HISTORY: TableDefinition<(&[u8], i64), &[u8]> = TableDefinition::new("history");
/// Format 1's order of replacement: (replaced at, key) → mod revision.
const FORMAT_1_REPLACED: TableDefinition<(i64, &[u8]), i64> = TableDefinition::new("replaced");
/// Format 2's index of past versions: (key, mod revision) → replaced at.
const FORMAT_2_BY_KEY: TableDefinition<(&[u8], i64), i64> = TableDefinition::new("past_by_key");

/// The layout of the file written by this build; a file of another is refused, except
/// formats 1 and 2, which are converted.
const FORMAT: u32 = 3;

/// A group of batches (one transaction, see the module docs) that holds [`GROUP_CHANGES`]
/// changes ends once it is this old. Longer groups write a page that many puts change fewer
/// times: at 256 clients on 10,000 keys, 1 s instead of 200 ms (synced every 2 s instead of
/// 500 ms) bought 39% more puts per second and cut the servers' CPU per put by a third
/// (docs/benchmarks.md, 2026-12-04); 500 ms did no better than 1 s (2026-12-05). Every
/// group's commit is synced: against a sync after every other group, at 256 clients that
/// bought 6% more puts per second, 6% less of the servers' CPU per put and a quarter off the
/// p99.9 (three alternating pairs, 2026-12-05): redb keeps the pages of an unsynced commit
/// in its write buffer, where reading them costs more than in its page cache.
const GROUP_FOR: Duration = Duration::from_millis(1000);

/// Changes (keys set or removed) that end a group [`GROUP_FOR`] old. At a lower rate a group
/// lasts longer, up to [`GROUP_AT_MOST`]: at one client (950 puts a second over 10,000 keys)
/// a group of 1 s rewrote most leaf pages of the `keys` table each second, and the page
/// writes slowed the members' log writes beside them; ending groups this way cut the
/// one-client p99 of a put by 14% and the servers' CPU per put by 6%, and at 16 clients (2 s
/// groups) gave 6% more puts per second (alternating pairs, docs/benchmarks.md, 2026-12-05
/// 19:21). A crash replays at most the last group: about 10,000 changes, or one second of
/// writes when there are more.
const GROUP_CHANGES: u64 = 10_000;

/// The longest a group lasts however few changes it holds (checked as each batch ends: a
/// group open when writes stop ends with the next batch, or is synced at a clean stop).
/// redb keeps a transaction's dirty pages within half of its page cache (it writes the rest
/// out early), so memory stays bounded however long the group is.
const GROUP_AT_MOST: Duration = Duration::from_secs(10);

/// The tables of the open write transaction. They are opened once per transaction, not per
/// operation: opening a table looks it up in redb's table tree and allocates, which cost
/// about 6% of a member's CPU at 256 clients when every put did it four times.
struct Tables<'t> {
    keys: redb::Table<'t, &'static [u8], &'static [u8]>,
    past: redb::Table<'t, (i64, &'static [u8]), &'static [u8]>,
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
                past: txn.open_table(PAST)?,
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
/// The `past` table.
struct Past;

/// Implements [`Pick`] for `$name`: table `$def`, field `$field` of [`Tables`].
macro_rules! pick {
    ($name:ident, $field:ident, $def:ident, $k:ty, $v:ty) => {
        impl Pick for $name {
            type K = $k;
            type V = $v;
            const DEF: TableDefinition<'static, Self::K, Self::V> = $def;
            fn pick<'b, 't>(tables: &'b Tables<'t>) -> &'b redb::Table<'t, Self::K, Self::V> {
                &tables.$field
            }
            fn pick_mut<'b, 't>(
                tables: &'b mut Tables<'t>,
            ) -> &'b mut redb::Table<'t, Self::K, Self::V> {
                &mut tables.$field
            }
        }
    };
}

pick!(Keys, keys, KEYS, &'static [u8], &'static [u8]);
pick!(Past, past, PAST, (i64, &'static [u8]), &'static [u8]);

/// The most bytes (keys and values) of past versions kept in memory until the group's commit
/// (`recent.rs`); past it, the oldest half are written into the open transaction at once. A
/// group lasts about a second at high load, up to ten at a low one: 1,000 puts a second of
/// 100 KB values would otherwise hold a gigabyte. At 256 clients with 256-byte values a
/// second of versions is about 5 MB, under this.
const RECENT_BYTES: usize = 16 << 20;

/// Keys and past versions read per step of a range scan (each step reads from the table again).
const PAGE: usize = 512;

/// Reads the index of every version in `past` ([`PastIndex`]).
fn read_index(
    past: &dyn ReadTable<(i64, &'static [u8]), &'static [u8]>,
) -> Result<PastIndex, redb::Error> {
    let mut index = PastIndex::default();
    for item in past.range_of((Bound::Unbounded, Bound::Unbounded))? {
        let (k, v) = item?;
        let (at, key) = k.value();
        let mod_revision = le_word(v.value(), 0)
            .map(i64::from_le_bytes)
            .ok_or_else(|| damaged("past", key))?;
        index.push_read(key, mod_revision, at);
    }
    Ok(index)
}

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
    db: Arc<Database>,
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
    /// Keys set or removed since the last group ended (those applied while its sync ran
    /// belong to the next group).
    changes: u64,
    /// The index of `past`, as of the open transaction if there is one (with the versions in
    /// `recent`).
    index: PastIndex,
    /// Past versions replaced since the open group began: written into `past` when it is
    /// committed, unless a compaction drops them first (`recent.rs`).
    recent: RecentPast,
    /// [`RECENT_BYTES`] (tests lower it).
    recent_limit: usize,
    /// While a sync runs on its thread: the versions replaced at or before this revision
    /// were compacted, but are still in the file (or being written there by the sync); they
    /// are removed when it ends ([`finish_sync`](Self::finish_sync)) and skipped until then.
    unremoved_through: Option<i64>,
    /// A synced commit running on a thread of its own, and what was applied meanwhile.
    syncing: Option<Syncing>,
    /// Tests: while this is set, the sync thread waits (up to 20 s) before it syncs, so the
    /// keyspace goes on applying into [`Pending`].
    #[cfg(test)]
    hold: Arc<(Mutex<bool>, std::sync::Condvar)>,
    /// Tests: the next commit hands its sync to a thread whatever the time.
    #[cfg(test)]
    sync_next: bool,
}

/// A synced commit running on a thread of its own (see `pending.rs`).
struct Syncing {
    /// Its outcome, when it ends (in a mutex only to make the keyspace `Sync`: it is used
    /// through `&mut` alone).
    done: Mutex<mpsc::Receiver<Result<(), String>>>,
    /// Its outcome, once received.
    ended: Option<Result<(), String>>,
    /// What was applied since it began: not in the file yet.
    pending: Pending,
    /// The past versions of the group it syncs (`recent` when the group ended): the thread
    /// writes them into its commit, so they are in the file once it ends.
    writing: Arc<RecentPast>,
}

impl Syncing {
    /// Whether the sync has ended (without waiting).
    fn has_ended(&mut self) -> bool {
        if self.ended.is_none() {
            let done = self.done.get_mut().unwrap_or_else(|p| p.into_inner());
            self.ended = match done.try_recv() {
                Ok(outcome) => Some(outcome),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => Some(Err(NO_ANSWER.to_string())),
            };
        }
        self.ended.is_some()
    }

    /// Waits for the sync to end; its outcome.
    fn wait(&mut self) -> Result<(), String> {
        match self.ended.take() {
            Some(outcome) => outcome,
            None => {
                let done = self.done.get_mut().unwrap_or_else(|p| p.into_inner());
                done.recv().unwrap_or_else(|_| Err(NO_ANSWER.to_string()))
            }
        }
    }
}

/// What a sync thread that ended without saying how it went (it panicked) is taken to say.
const NO_ANSWER: &str = "the state file's sync thread ended without an answer";

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
    /// A file of format 1 or 2 is converted first (in the same transaction). A file of
    /// another format, or whose state record is damaged, is refused with a message naming it.
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
            txn.open_table(PAST).map_err(|e| named(&e))?;
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
                Some(f) if f == 2u32.to_le_bytes() => {
                    txn.delete_table(FORMAT_2_BY_KEY).map_err(|e| named(&e))?;
                    meta.insert("format", FORMAT.to_le_bytes().as_slice())
                        .map_err(|e| named(&e))?;
                }
                Some(f) if f == 1u32.to_le_bytes() => {
                    convert_format_1(&txn).map_err(|e| {
                        named(&format!(
                            "converting the state file from format 1 to format {FORMAT}: {e} \
                             (nothing was changed; remove the file to rebuild the state from \
                             the member's snapshot and log)"
                        ))
                    })?;
                    meta.insert("format", FORMAT.to_le_bytes().as_slice())
                        .map_err(|e| named(&e))?;
                }
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
        let index = txn
            .open_table(PAST)
            .map_err(redb::Error::from)
            .and_then(|past| read_index(&past))
            .map_err(|e| {
                named(&format!(
                    "reading the index of past versions: {e} (remove the file to rebuild the \
                     state from the member's snapshot and log)"
                ))
            })?;
        txn.commit().map_err(|e| named(&e))?;
        Ok(Opened {
            keyspace: DurableKeyspace {
                db: Arc::new(db),
                path: path.to_path_buf(),
                write: None,
                opened: Instant::now(),
                in_batch: false,
                read: Mutex::new(None),
                error: Mutex::new(None),
                changes: 0,
                index,
                recent: RecentPast::default(),
                recent_limit: RECENT_BYTES,
                unremoved_through: None,
                syncing: None,
                #[cfg(test)]
                hold: Arc::default(),
                #[cfg(test)]
                sync_next: false,
            },
            state,
            cluster,
        })
    }

    /// Starts a batch: the writes until [`commit`](Self::commit) are one transaction (or,
    /// while a sync runs on its thread, kept in [`Pending`] until it ends).
    pub(crate) fn begin(&mut self) -> Result<(), String> {
        if let Some(syncing) = &mut self.syncing {
            if !syncing.has_ended() {
                self.in_batch = true;
                return Ok(());
            }
            self.finish_sync()?;
        }
        if self.write.is_none() {
            let txn = self.db.begin_write().map_err(|e| self.named(&e))?;
            self.write = Some(OpenWrite::open(txn).map_err(|e| self.named(&e))?);
            self.opened = Instant::now();
        }
        self.in_batch = true;
        Ok(())
    }

    /// Ends the batch: writes `state` (and `cluster`, the auth state and alarms, if given)
    /// with its changes, and, if that ends the group ([`group_ends`](Self::group_ends)),
    /// commits the transaction and syncs it on a thread of its own
    /// ([`sync_elsewhere`](Self::sync_elsewhere)); else a later batch commits it (reads see
    /// it meanwhile, through the transaction). If `sync` is set, it is committed and synced
    /// here, at once (after waiting for a sync still running). While a sync runs on its
    /// thread, the batch stays in [`Pending`] with `state`.
    pub(crate) fn commit(
        &mut self,
        state: &DurableState,
        cluster: Option<&[u8]>,
        sync: bool,
    ) -> Result<(), String> {
        if let Some(e) = self.take_error() {
            self.abandon();
            return Err(e);
        }
        if let Some(syncing) = &mut self.syncing {
            if !sync && !syncing.has_ended() {
                // The batch stays in `Pending` with its state record, written when the sync
                // ends.
                syncing.pending.state = Some(*state);
                if let Some(cluster) = cluster {
                    syncing.pending.cluster = Some(cluster.to_vec());
                }
                self.in_batch = false;
                return Ok(());
            }
            self.finish_sync()?;
        }
        self.begin()?;
        let Some(mut open) = self.write.take() else {
            return Err(self.named(&"no batch to commit"));
        };
        self.in_batch = false;
        let ends = self.group_ends();
        #[cfg(test)]
        let ends = ends || std::mem::take(&mut self.sync_next);
        if let Err(e) = write_meta(open.borrow_owner(), state, cluster) {
            return Err(self.named(&e));
        }
        if !sync && !ends {
            self.write = Some(open);
            return Ok(());
        }
        // The sync of a group that ended runs on a thread of its own, after this commit
        // (see `pending.rs`); one asked for runs here.
        self.changes = 0;
        if sync && let Err(e) = write_recent(&mut open, &mut self.recent) {
            return Err(self.named(&e));
        }
        let txn = open.into_owner();
        let result = if sync {
            commit_synced(txn)
        } else {
            commit_unsynced(txn)
        };
        *self.lock_read() = None;
        result.map_err(|e| self.named(&e))?;
        if !sync {
            // While the sync runs, reads of the file go through a read transaction begun
            // before it, which does not hold the past versions it writes (they are read from
            // `writing` meanwhile).
            *self.lock_read() = Some(self.db.begin_read().map_err(|e| self.named(&e))?);
            self.sync_elsewhere();
        }
        Ok(())
    }

    /// Whether the open group ends with the batch being committed (see [`group_ends`]).
    fn group_ends(&self) -> bool {
        group_ends(self.opened.elapsed(), self.changes)
    }

    /// Starts a synced commit on a thread of its own, of the group's past versions (taken
    /// from `recent`): it makes every commit before it durable (redb's contract for commits
    /// without durability), with them. Until it ends, the write transaction is the thread's:
    /// batches are applied into [`Pending`]. If no thread can be started, the commit runs
    /// here.
    fn sync_elsewhere(&mut self) {
        let (tell, done) = mpsc::channel();
        let db = Arc::clone(&self.db);
        let writing = Arc::new(self.recent.take());
        let versions = Arc::clone(&writing);
        #[cfg(test)]
        let hold = Arc::clone(&self.hold);
        let started = std::thread::Builder::new()
            .name("kv-state-sync".into())
            .spawn(move || {
                // (At most 20 s: a test that fails while holding it then ends instead of
                // hanging in the keyspace's drop, which waits for this.)
                #[cfg(test)]
                {
                    let (held, wake) = &*hold;
                    let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
                    let until = Instant::now() + Duration::from_secs(20);
                    while *held && Instant::now() < until {
                        let left = until.saturating_duration_since(Instant::now());
                        held = wake
                            .wait_timeout(held, left)
                            .map(|(held, _)| held)
                            .unwrap_or_else(|p| p.into_inner().0);
                    }
                }
                let _ = tell.send(sync_past(&db, &versions).map_err(|e| e.to_string()));
            });
        match started {
            Ok(_) => {
                self.syncing = Some(Syncing {
                    done: Mutex::new(done),
                    ended: None,
                    pending: Pending::default(),
                    writing,
                });
            }
            Err(e) => {
                tracing::debug!(file = %self.path.display(), "no thread for the state file's sync ({e}): syncing on the apply task");
                if let Err(e) = sync_past(&self.db, &writing) {
                    self.fail(e);
                }
                // (Reads see what it wrote.)
                *self.lock_read() = None;
            }
        }
    }

    /// Waits for the sync running on its thread, if any, and writes what was applied
    /// meanwhile into a new open transaction (with the state record of its last batch).
    fn finish_sync(&mut self) -> Result<(), String> {
        let Some(mut syncing) = self.syncing.take() else {
            return Ok(());
        };
        let synced = syncing.wait();
        *self.lock_read() = None;
        synced.map_err(|e| format!("syncing the state file: {e}"))?;
        let txn = self.db.begin_write().map_err(|e| self.named(&e))?;
        let mut open = OpenWrite::open(txn).map_err(|e| self.named(&e))?;
        let pending = syncing.pending;
        let compacted = self.unremoved_through.take();
        let written = open.with_dependent_mut(|_, tables| -> Result<(), redb::Error> {
            if let Some(through) = compacted {
                let bounds = (
                    Bound::Unbounded,
                    Bound::Excluded((through.saturating_add(1), &b""[..])),
                );
                tables
                    .past
                    .retain_in::<(i64, &[u8]), _>(bounds, |_, _| false)?;
            }
            for (key, record) in &pending.keys {
                match record {
                    Some(record) => {
                        tables
                            .keys
                            .insert(key.as_ref(), encode_record(record).as_slice())?;
                    }
                    None => {
                        tables.keys.remove(key.as_ref())?;
                    }
                }
            }
            Ok(())
        });
        // A batch ended meanwhile left its state record (the cluster record comes with one).
        let recorded = written.and_then(|()| match &pending.state {
            Some(state) => write_meta(open.borrow_owner(), state, pending.cluster.as_deref()),
            None => Ok(()),
        });
        recorded.map_err(|e| self.named(&e))?;
        self.write = Some(open);
        self.opened = Instant::now();
        Ok(())
    }

    /// A read transaction that holds every batch ended so far: a sync still running is
    /// waited for, and the open transaction committed (unsynced, as the group's commit would
    /// be; the Raft log holds what a crash loses).
    fn freeze_now(&mut self) -> Result<ReadTransaction, String> {
        if self.in_batch {
            return Err(self.named(&"a view taken inside a batch (a bug: between batches only)"));
        }
        self.finish_sync()?;
        if let Some(mut open) = self.write.take() {
            let committed = write_recent(&mut open, &mut self.recent)
                .and_then(|()| commit_unsynced(open.into_owner()));
            *self.lock_read() = None;
            committed.map_err(|e| self.named(&e))?;
        }
        self.db.begin_read().map_err(|e| self.named(&e))
    }

    /// The changes applied while a sync runs on its thread, if one does.
    fn pending(&self) -> Option<&Pending> {
        self.syncing.as_ref().map(|s| &s.pending)
    }

    /// Drops the open transaction (its batches never happened) and rebuilds the index from
    /// the file to match.
    fn abandon(&mut self) {
        self.write = None;
        self.recent.clear();
        self.unremoved_through = None;
        // While a sync runs: the file as of the group's commit (the read transaction begun
        // then), and the past versions the sync writes after it.
        let writing = match &mut self.syncing {
            Some(syncing) => {
                syncing.pending = Pending::default();
                Some(Arc::clone(&syncing.writing))
            }
            None => {
                *self.lock_read() = None;
                None
            }
        };
        let mut index = self
            .read_table::<Past, _>(|t| read_index(t))
            .unwrap_or_default();
        for (key, past) in writing.iter().flat_map(|w| w.iter()) {
            index.push_read(key, past.record.mod_revision, past.superseded_at);
        }
        self.index = index;
    }

    /// Keeps `past`, a version of `key` just noted in the index, until the group's commit
    /// (`recent.rs`). In the index now; in `past` when the group is committed, unless a
    /// compaction drops it first. What is kept owns its bytes, so that the bound below counts
    /// what it holds: the key is a slice of the applied entry (which holds the new value
    /// too), and so is the value of a record replaced while a sync runs, which can come from
    /// `Pending` as it was applied (otherwise it was just decoded from the file).
    fn keep_past(&mut self, key: Bytes, mut past: PastVersion) {
        if self.syncing.is_some() {
            past.record.value = Bytes::copy_from_slice(&past.record.value);
        }
        self.recent.push(Bytes::copy_from_slice(&key), past);
        // Too many bytes to hold until the group's commit: the oldest half go into the open
        // transaction now (while a sync runs there is none; they wait the few milliseconds
        // until it ends).
        if self.recent.bytes() > self.recent_limit && self.write.is_some() {
            let oldest = self.recent.split_oldest(self.recent_limit / 2);
            let written = self.write.as_mut().map(|open| write_past(open, &oldest));
            if let Some(Err(e)) = written {
                self.fail(e);
            }
        }
    }

    /// The version of `key` replaced at `at`, if it is not in the file yet: kept in
    /// `recent`, or being written by the sync running on its thread.
    fn unwritten_past(&self, at: i64, key: &[u8]) -> Option<&PastVersion> {
        self.recent
            .get(at, key)
            .or_else(|| self.syncing.as_ref()?.writing.get(at, key))
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
}

impl DurableKeyspace {
    /// Up to [`PAGE`] past versions within `bounds`, in the order they were replaced.
    fn past_page(&self, bounds: PastBounds<'_>) -> Vec<(Bytes, PastVersion)> {
        self.read_table::<Past, _>(|t| {
            let mut out = Vec::new();
            for item in t.range_of(bounds)? {
                let (k, v) = item?;
                let (at, key) = k.value();
                let past = decode_past(at, v.value()).ok_or_else(|| damaged("past", key))?;
                out.push((Bytes::copy_from_slice(key), past));
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

/// A past version as the `past` table keeps it (the revision that replaced it is in the
/// table's key).
fn encode_past(p: &PastVersion) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + p.record.value.len());
    out.extend_from_slice(&p.record.mod_revision.to_le_bytes());
    out.extend_from_slice(&p.record.create_revision.to_le_bytes());
    out.extend_from_slice(&p.record.version.to_le_bytes());
    out.extend_from_slice(&p.record.value);
    out
}

fn decode_past(superseded_at: i64, bytes: &[u8]) -> Option<PastVersion> {
    let word = |i: usize| le_word(bytes, i).map(i64::from_le_bytes);
    Some(PastVersion {
        superseded_at,
        record: KeyRecord {
            mod_revision: word(0)?,
            create_revision: word(8)?,
            version: word(16)?,
            value: Bytes::copy_from_slice(bytes.get(24..)?),
        },
    })
}

/// A past version as format 1's history table kept it (its mod revision in the table's key).
fn decode_format_1_past(mod_revision: i64, bytes: &[u8]) -> Option<PastVersion> {
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

/// Rewrites format 1's past versions into the `past` table, in `txn` (which the caller
/// commits, or drops on an error: then the file is as it was).
fn convert_format_1(txn: &WriteTransaction) -> Result<(), redb::Error> {
    {
        let old = txn.open_table(FORMAT_1_HISTORY)?;
        let mut past = txn.open_table(PAST)?;
        for item in old.iter()? {
            let (k, v) = item?;
            let (key, mod_revision) = k.value();
            let version = decode_format_1_past(mod_revision, v.value())
                .ok_or_else(|| damaged("history", key))?;
            past.insert(
                (version.superseded_at, key),
                encode_past(&version).as_slice(),
            )?;
        }
    }
    txn.delete_table(FORMAT_1_HISTORY)?;
    txn.delete_table(FORMAT_1_REPLACED)?;
    Ok(())
}

/// Whether a group `age` old holding `changes` changes ends: it is [`GROUP_FOR`] old and
/// holds [`GROUP_CHANGES`] changes, or it is [`GROUP_AT_MOST`] old.
fn group_ends(age: Duration, changes: u64) -> bool {
    age >= GROUP_AT_MOST || (age >= GROUP_FOR && changes >= GROUP_CHANGES)
}

/// Forgets `versions` (dropped by a compaction, oldest first) in `index`, each its key's
/// oldest there, telling `dropped` of each; an error if one is not (the index and the
/// versions are out of step: the file is damaged).
fn forget<'a>(
    index: &mut PastIndex,
    versions: impl Iterator<Item = &'a (Bytes, PastVersion)>,
    dropped: &mut dyn FnMut(&[u8], &KeyRecord),
) -> Result<(), redb::Error> {
    for (key, past) in versions {
        if !index.pop_oldest(key, past.record.mod_revision) {
            return Err(damaged("past", key));
        }
        dropped(key, &past.record);
    }
    Ok(())
}

/// Writes the past versions kept in `recent` into `open`'s `past` table (each at its end, as
/// they are in its order), leaving `recent` empty.
fn write_recent(open: &mut OpenWrite, recent: &mut RecentPast) -> Result<(), redb::Error> {
    let written = write_past(open, recent);
    recent.clear();
    written
}

/// Writes `versions` into `open`'s `past` table (each at its end, as they are in its order).
fn write_past(open: &mut OpenWrite, versions: &RecentPast) -> Result<(), redb::Error> {
    open.with_dependent_mut(|_, tables| {
        for (key, past) in versions.iter() {
            tables.past.insert(
                (past.superseded_at, key.as_ref()),
                encode_past(past).as_slice(),
            )?;
        }
        Ok(())
    })
}

/// A synced commit of `versions` into `past`: it makes every commit before it durable.
fn sync_past(db: &Database, versions: &RecentPast) -> Result<(), redb::Error> {
    let mut open = OpenWrite::open(db.begin_write()?)?;
    write_past(&mut open, versions)?;
    commit_synced(open.into_owner())
}

/// A synced empty commit: it makes every commit before it durable.
fn sync_empty(db: &Database) -> Result<(), redb::Error> {
    commit_synced(db.begin_write()?)
}

/// Commits `txn` and syncs it (with everything committed before it).
fn commit_synced(mut txn: WriteTransaction) -> Result<(), redb::Error> {
    txn.set_durability(Durability::Immediate)
        .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    txn.set_quick_repair(true);
    txn.commit()?;
    Ok(())
}

/// Commits `txn` without a sync: durable with the next synced commit (redb's contract).
fn commit_unsynced(mut txn: WriteTransaction) -> Result<(), redb::Error> {
    txn.set_durability(Durability::None)
        .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    txn.commit()?;
    Ok(())
}

/// Writes a batch's state record, and the cluster record if given, into `txn`.
fn write_meta(
    txn: &WriteTransaction,
    state: &DurableState,
    cluster: Option<&[u8]>,
) -> Result<(), redb::Error> {
    let mut meta = txn.open_table(META)?;
    meta.insert("state", state.encode().as_slice())?;
    if let Some(cluster) = cluster {
        meta.insert("cluster", cluster)?;
    }
    Ok(())
}

/// [`DurableKeyspace`]'s frozen view: a read transaction of the file.
struct Frozen {
    txn: ReadTransaction,
    path: PathBuf,
}

impl Frozen {
    fn failed(&self, e: impl std::fmt::Display) -> std::io::Error {
        std::io::Error::other(format!("reading {}: {e}", self.path.display()))
    }
}

impl FrozenKeyspace for Frozen {
    fn each_live(
        &self,
        each: &mut dyn FnMut(Bytes, KeyRecord) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let table = self.txn.open_table(KEYS).map_err(|e| self.failed(e))?;
        for row in table.iter().map_err(|e| self.failed(e))? {
            let (key, value) = row.map_err(|e| self.failed(e))?;
            let record = decode_record(value.value())
                .ok_or_else(|| self.failed(damaged("keys", key.value())))?;
            each(Bytes::copy_from_slice(key.value()), record)?;
        }
        Ok(())
    }

    fn each_past(
        &self,
        each: &mut dyn FnMut(Bytes, PastVersion) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let table = self.txn.open_table(PAST).map_err(|e| self.failed(e))?;
        for row in table.iter().map_err(|e| self.failed(e))? {
            let (at_key, value) = row.map_err(|e| self.failed(e))?;
            let (at, key) = at_key.value();
            let past =
                decode_past(at, value.value()).ok_or_else(|| self.failed(damaged("past", key)))?;
            each(Bytes::copy_from_slice(key), past)?;
        }
        Ok(())
    }
}

/// Bounds on the `past` table's (replaced at, key).
type PastBounds<'a> = (Bound<(i64, &'a [u8])>, Bound<(i64, &'a [u8])>);

/// A bound on keys, owned, for a scan that resumes page by page.
fn owned(b: Bound<&[u8]>) -> Bound<Bytes> {
    b.map(Bytes::copy_from_slice)
}

impl Keyspace for DurableKeyspace {
    fn get(&self, key: &[u8]) -> Option<KeyRecord> {
        if let Some(changed) = self.pending().and_then(|p| p.get(key)) {
            return changed;
        }
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
        let mut page = VecDeque::new();
        let mut done = false;
        let file = Box::new(std::iter::from_fn(move || {
            if page.is_empty() && !done {
                let got = self.live_page((lower.clone(), upper.clone()));
                done = got.len() < PAGE;
                if let Some((last, _)) = got.last() {
                    lower = Bound::Excluded(last.clone());
                }
                page.extend(got);
            }
            page.pop_front()
        }));
        match self.pending() {
            Some(pending) => pending.merge_live(file, bounds),
            None => file,
        }
    }

    fn dead_keys_with_history<'a>(
        &'a self,
        bounds: KeyBounds<'a>,
    ) -> Box<dyn Iterator<Item = Bytes> + 'a> {
        Box::new(self.index.maybe_dead(bounds).cloned())
    }

    fn history(&self, key: &[u8]) -> Vec<PastVersion> {
        // The index gives when each version was replaced, oldest first; the versions are
        // read from `past`, or from memory if not written yet.
        let Some(versions) = self.index.versions(key) else {
            return Vec::new();
        };
        // The oldest are in the file, the rest in memory (`unwritten_past`).
        let in_file = versions
            .iter()
            .take_while(|(_, at)| self.unwritten_past(*at, key).is_none())
            .count();
        let mut out = if in_file == 0 {
            Vec::with_capacity(versions.len())
        } else {
            let read = self.read_table::<Past, _>(|t| {
                let mut out = Vec::with_capacity(versions.len());
                for (mod_revision, at) in versions.iter().take(in_file) {
                    let v = t
                        .get_value((*at, key))?
                        .ok_or_else(|| damaged("past", key))?;
                    let past = decode_past(*at, v.value())
                        .filter(|p| p.record.mod_revision == *mod_revision)
                        .ok_or_else(|| damaged("past", key))?;
                    out.push(past);
                }
                Ok(out)
            });
            match read {
                Some(out) => out,
                None => return Vec::new(),
            }
        };
        for (mod_revision, at) in versions.iter().skip(in_file) {
            match self.unwritten_past(*at, key) {
                Some(past) if past.record.mod_revision == *mod_revision => out.push(past.clone()),
                _ => {
                    self.fail(damaged("past", key));
                    return Vec::new();
                }
            }
        }
        out
    }

    fn past_in_order(&self) -> Box<dyn Iterator<Item = (Bytes, PastVersion)> + '_> {
        let mut lower: Bound<(i64, Bytes)> = Bound::Unbounded;
        let mut page = VecDeque::new();
        let mut done = false;
        let file = std::iter::from_fn(move || {
            if page.is_empty() && !done {
                let low = match &lower {
                    Bound::Excluded((at, k)) => Bound::Excluded((*at, k.as_ref())),
                    _ => Bound::Unbounded,
                };
                let got = self.past_page((low, Bound::Unbounded));
                done = got.len() < PAGE;
                if let Some((key, past)) = got.last() {
                    lower = Bound::Excluded((past.superseded_at, key.clone()));
                }
                page.extend(got);
            }
            page.pop_front()
        });
        // Versions not written yet were all replaced after those in the file: first those a
        // sync running on its thread writes (the file is read as of before it), then those
        // kept since. Those compacted while the sync runs are still in the first two
        // (`unremoved_through`), and skipped.
        let forgotten = self.unremoved_through.unwrap_or(i64::MIN);
        let writing = self.syncing.iter().flat_map(|s| s.writing.iter().cloned());
        Box::new(
            file.chain(writing)
                .skip_while(move |(_, p)| p.superseded_at <= forgotten)
                .chain(self.recent.iter().cloned()),
        )
    }

    fn live_count(&self) -> u64 {
        let in_file = self.read_table::<Keys, _>(|t| t.count()).unwrap_or(0);
        let delta = self.pending().map_or(0, |p| p.live_delta);
        in_file.saturating_add_signed(delta)
    }

    fn past_count(&self) -> u64 {
        self.index.count()
    }

    fn insert(&mut self, key: Bytes, record: KeyRecord) {
        self.changes += 1;
        if self.syncing.is_some() {
            let was_live = self.get(&key).is_some();
            if let Some(syncing) = &mut self.syncing {
                syncing.pending.set(key, Some(record), was_live);
            }
            return;
        }
        self.write_table::<Keys, _>(|t| {
            t.insert(key.as_ref(), encode_record(&record).as_slice())?;
            Ok(())
        });
    }

    fn replace(
        &mut self,
        key: Bytes,
        make: &mut dyn FnMut(Option<&KeyRecord>) -> KeyRecord,
    ) -> Option<KeyRecord> {
        self.changes += 1;
        if self.syncing.is_some() {
            // Applied into memory while the sync holds the transaction (as `insert` does,
            // without looking the key up a second time).
            let prev = self.get(&key);
            let record = make(prev.as_ref());
            if let Some(syncing) = &mut self.syncing {
                syncing.pending.set(key, Some(record), prev.is_some());
            }
            return prev;
        }
        // One descent for both: `get_mut` copies the path to the key's leaf (as an insert
        // would) and the new record replaces the old there. A separate get before the insert
        // was about 5% of a member's CPU at 256 clients (docs/benchmarks.md, 2026-12-06).
        self.write_table::<Keys, _>(|t| {
            if let Some(mut slot) = t.get_mut(key.as_ref())? {
                let prev = decode_record(slot.value()).ok_or_else(|| damaged("keys", &key))?;
                slot.insert(encode_record(&make(Some(&prev))).as_slice())?;
                return Ok(Some(prev));
            }
            t.insert(key.as_ref(), encode_record(&make(None)).as_slice())?;
            Ok(None)
        })
        .flatten()
    }

    fn remove(&mut self, key: &[u8]) -> Option<KeyRecord> {
        self.changes += 1;
        let old = if self.syncing.is_some() {
            let old = self.get(key);
            if let Some(syncing) = &mut self.syncing {
                let key = Bytes::copy_from_slice(key);
                syncing.pending.set(key, None, old.is_some());
            }
            old
        } else {
            self.write_table::<Keys, _>(|t| {
                t.remove(key)?
                    .map(|v| decode_record(v.value()).ok_or_else(|| damaged("keys", key)))
                    .transpose()
            })
            .flatten()
        };
        // Not live now: range reads at past revisions find it through the index.
        if old.is_some() {
            self.index.removed(key);
        }
        old
    }

    fn push_past(&mut self, key: Bytes, past: PastVersion) {
        self.index
            .push(&key, past.record.mod_revision, past.superseded_at);
        self.keep_past(key, past);
    }

    fn push_restored_past(&mut self, key: Bytes, past: PastVersion) {
        self.index
            .push_read(&key, past.record.mod_revision, past.superseded_at);
        self.keep_past(key, past);
    }

    fn drop_past_through(&mut self, revision: i64, dropped: &mut dyn FnMut(&[u8], &KeyRecord)) {
        // Every version replaced at or before `revision`, oldest first: those in the file
        // (all replaced before those in memory), those a sync running on its thread writes,
        // then those in `recent`; each is its key's oldest in the index. Those in the file
        // are removed from it at once, unless a sync runs (it holds the write transaction):
        // then they, and those it writes, are only forgotten here, and removed when it ends
        // (`unremoved_through`), so that a compaction never waits for a sync.
        let syncing = match &mut self.syncing {
            Some(s) => !s.has_ended(),
            None => false,
        };
        if !syncing && let Err(e) = self.finish_sync() {
            self.fail(e);
            return;
        }
        let after = revision.saturating_add(1);
        // The empty key is the smallest: (r, "") bounds exactly the versions replaced
        // before r.
        let mut lower: Bound<(i64, Bytes)> = match self.unremoved_through {
            Some(r) => Bound::Included((r.saturating_add(1), Bytes::new())),
            None => Bound::Unbounded,
        };
        loop {
            let low = lower.as_ref().map(|(at, k)| (*at, k.as_ref()));
            let page = self.past_page((low, Bound::Excluded((after, &b""[..]))));
            let Some((last_key, last)) = page.last() else {
                break;
            };
            let through = (last.superseded_at, last_key.clone());
            if !syncing {
                // The first entries of `past`, removed from its start.
                let removed = self.write_table::<Past, _>(|t| {
                    let bounds = (
                        Bound::Unbounded,
                        Bound::Included((through.0, through.1.as_ref())),
                    );
                    t.retain_in::<(i64, &[u8]), _>(bounds, |_, _| false)?;
                    Ok(())
                });
                if removed.is_none() {
                    return;
                }
            }
            if let Err(e) = forget(&mut self.index, page.iter(), dropped) {
                self.fail(e);
                return;
            }
            if page.len() < PAGE {
                break;
            }
            lower = Bound::Excluded(through);
        }
        if let Some(s) = self.syncing.as_ref().filter(|_| syncing) {
            let writing = Arc::clone(&s.writing);
            let forgotten = self.unremoved_through.unwrap_or(i64::MIN);
            let now = writing
                .iter()
                .skip_while(|(_, p)| p.superseded_at <= forgotten)
                .take_while(|(_, p)| p.superseded_at <= revision);
            if let Err(e) = forget(&mut self.index, now, dropped) {
                self.fail(e);
                return;
            }
            self.unremoved_through = Some(forgotten.max(revision));
        }
        let dropping = self.recent.split_through(revision);
        if let Err(e) = forget(&mut self.index, dropping.iter(), dropped) {
            self.fail(e);
        }
    }

    fn clear(&mut self) {
        if let Err(e) = self.finish_sync() {
            self.fail(e);
            return;
        }
        let Some(open) = self.write.take() else {
            self.fail("clear outside a batch (a bug: begin() first)");
            return;
        };
        // The tables are closed (the transaction taken back) to delete them, then reopened.
        let txn = open.into_owner();
        let result = (|| -> Result<(), redb::Error> {
            txn.delete_table(KEYS)?;
            txn.delete_table(PAST)?;
            Ok(())
        })();
        self.index = PastIndex::default();
        self.recent.clear();
        if let Err(e) = result {
            self.fail(e);
        }
        match OpenWrite::open(txn) {
            Ok(open) => self.write = Some(open),
            // The transaction is gone with the error: the batch fails (take_error).
            Err(e) => self.fail(e),
        }
    }

    fn freeze(&mut self) -> Option<Result<Box<dyn FrozenKeyspace>, String>> {
        Some(self.freeze_now().map(|txn| {
            Box::new(Frozen {
                txn,
                path: self.path.clone(),
            }) as Box<dyn FrozenKeyspace>
        }))
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
        self.take_error();
        self.abandon();
    }
}

impl Drop for DurableKeyspace {
    /// A synced empty commit makes every unsynced one durable: a clean stop replays nothing.
    fn drop(&mut self) {
        // The open transaction (and what was applied while a sync ran on its thread, written
        // into it once that sync ends) holds whole batches with their state record, unless a
        // batch was left unfinished (a failed apply): then all of it is abandoned, replayed
        // from the log.
        if let Some(syncing) = &mut self.syncing {
            if self.in_batch {
                // (With the compactions in them: the transaction that would remove what they
                // forgot from the file is not committed either.)
                syncing.pending = Pending::default();
            }
            if let Err(e) = self.finish_sync() {
                tracing::warn!(file = %self.path.display(), "could not sync the state file at stop: {e}");
            }
        }
        let open = self.write.take().filter(|_| !self.in_batch);
        *self.lock_read() = None;
        let synced = match open {
            Some(mut open) => write_recent(&mut open, &mut self.recent)
                .and_then(|()| commit_synced(open.into_owner())),
            None => sync_empty(&self.db),
        };
        if let Err(e) = synced {
            tracing::warn!(file = %self.path.display(), "could not sync the state file at stop: {e}");
        }
    }
}

/// The tests' deterministic generator, shared with the integration tests and benchmarks.
#[cfg(test)]
#[path = "../../tests/support/xorshift.rs"]
mod xorshift;

#[cfg(test)]
mod tests {
    use redb::TableHandle;

    use crate::store::MemoryKeyspace;

    use super::*;

    /// Starts a file as a build of `format` wrote it: the format, `state`, and a live key `a`
    /// (version 3, modified at `mod_revision`).
    fn write_start(txn: &WriteTransaction, format: u32, state: &DurableState, mod_revision: i64) {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("format", format.to_le_bytes().as_slice())
            .unwrap();
        meta.insert("state", state.encode().as_slice()).unwrap();
        let mut keys = txn.open_table(KEYS).unwrap();
        let live = KeyRecord {
            create_revision: 1,
            mod_revision,
            version: 3,
            value: Bytes::from("a3"),
        };
        keys.insert(b"a".as_slice(), encode_record(&live).as_slice())
            .unwrap();
    }

    /// Writes a file as a format-1 build did: a live key `a`, and past versions of `a` and `b`
    /// as (key, replaced at, mod revision, create revision, version, value).
    fn write_format_1(
        path: &Path,
        state: &DurableState,
        versions: &[(&str, i64, i64, i64, i64, &str)],
    ) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        write_start(&txn, 1, state, 5);
        {
            let mut history = txn.open_table(FORMAT_1_HISTORY).unwrap();
            let mut replaced = txn.open_table(FORMAT_1_REPLACED).unwrap();
            for (key, at, mod_revision, create, version, value) in versions {
                let mut bytes = Vec::new();
                for word in [at, create, version] {
                    bytes.extend_from_slice(&word.to_le_bytes());
                }
                bytes.extend_from_slice(value.as_bytes());
                history
                    .insert((key.as_bytes(), *mod_revision), bytes.as_slice())
                    .unwrap();
                replaced
                    .insert((*at, key.as_bytes()), *mod_revision)
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// The format recorded in the file at `path`.
    fn format_of(path: &Path) -> Vec<u8> {
        let db = Database::create(path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        meta.get("format").unwrap().unwrap().value().to_vec()
    }

    #[test]
    fn a_damaged_format_1_file_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        write_format_1(&path, &DurableState::default(), &[("a", 3, 1, 1, 1, "a1")]);
        {
            // A past version too short to hold its three words.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(FORMAT_1_HISTORY)
                .unwrap()
                .insert((b"b".as_slice(), 2), [0u8; 5].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let e = DurableKeyspace::open(&path, 1 << 20).unwrap_err();
        assert!(e.contains("converting the state file from format 1"), "{e}");
        assert!(e.contains("remove the file"), "{e}");
        assert_eq!(format_of(&path), 1u32.to_le_bytes());
    }

    #[test]
    fn a_past_version_too_short_for_the_index_is_refused_at_open_with_the_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        drop(DurableKeyspace::open(&path, 1 << 20).unwrap());
        {
            // Too short to hold the mod revision the index is built from.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(PAST)
                .unwrap()
                .insert((4, b"b".as_slice()), [0u8; 5].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let e = DurableKeyspace::open(&path, 1 << 20).unwrap_err();
        assert!(e.contains("reading the index of past versions"), "{e}");
        assert!(e.contains("damaged record in table past"), "{e}");
        assert!(e.contains("remove the file"), "{e}");
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        assert_eq!(txn.open_table(PAST).unwrap().count().unwrap(), 1);
    }

    fn versions_of(ks: &DurableKeyspace, key: &str) -> Vec<(i64, i64, String)> {
        ks.history(key.as_bytes())
            .into_iter()
            .map(|p| {
                let value = String::from_utf8_lossy(&p.record.value).into_owned();
                (p.superseded_at, p.record.mod_revision, value)
            })
            .collect()
    }

    #[test]
    fn a_format_1_file_is_converted_with_its_history_and_compacts_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let state = DurableState {
            applied: 9,
            revision: 5,
            compact_revision: 0,
            size_bytes: 12,
        };
        write_format_1(
            &path,
            &state,
            &[
                ("a", 3, 1, 1, 1, "a1"),
                ("b", 4, 2, 2, 1, "b1"),
                ("a", 5, 3, 1, 2, "a2"),
            ],
        );

        let opened = DurableKeyspace::open(&path, 1 << 20).unwrap();
        assert_eq!(opened.state, state);
        let mut ks = opened.keyspace;
        assert_eq!(
            versions_of(&ks, "a"),
            [(3, 1, "a1".to_string()), (5, 3, "a2".to_string())]
        );
        assert_eq!(versions_of(&ks, "b"), [(4, 2, "b1".to_string())]);
        let order: Vec<(Bytes, i64)> = ks
            .past_in_order()
            .map(|(k, p)| (k, p.superseded_at))
            .collect();
        assert_eq!(
            order,
            [
                (Bytes::from("a"), 3),
                (Bytes::from("b"), 4),
                (Bytes::from("a"), 5)
            ]
        );
        let with_history: Vec<Bytes> = ks
            .dead_keys_with_history((Bound::Unbounded, Bound::Unbounded))
            .collect();
        assert_eq!(with_history, [Bytes::from("a"), Bytes::from("b")]);
        assert_eq!((ks.past_count(), ks.live_count()), (3, 1));

        // Compaction through revision 4 drops the first two, from both tables.
        ks.begin().unwrap();
        let mut dropped = Vec::new();
        ks.drop_past_through(4, &mut |k, r| {
            dropped.push((Bytes::copy_from_slice(k), r.mod_revision))
        });
        assert_eq!(dropped, [(Bytes::from("a"), 1), (Bytes::from("b"), 2)]);
        ks.commit(&state, None, true).unwrap();
        assert_eq!(ks.take_error(), None);
        assert_eq!(versions_of(&ks, "a"), [(5, 3, "a2".to_string())]);
        assert!(versions_of(&ks, "b").is_empty());
        drop(ks);

        // Reopened, it is a file of this format with the same content, and the old tables are
        // gone.
        let again = DurableKeyspace::open(&path, 1 << 20).unwrap().keyspace;
        assert_eq!(versions_of(&again, "a"), [(5, 3, "a2".to_string())]);
        assert_eq!(again.past_count(), 1);
        let txn = again.db.begin_read().unwrap();
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        for old in ["history", "replaced", "past_by_key"] {
            assert!(!names.contains(&old.to_string()), "{names:?}");
        }
        let meta = txn.open_table(META).unwrap();
        let format = meta.get("format").unwrap().unwrap().value().to_vec();
        assert_eq!(format, FORMAT.to_le_bytes());
    }

    /// Writes a file as a format-2 build did: a live key `a` and the given past versions as
    /// (key, replaced at, mod revision, value), with the `past_by_key` index table.
    fn write_format_2(path: &Path, state: &DurableState, versions: &[(&str, i64, i64, &str)]) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        write_start(&txn, 2, state, 9);
        {
            let mut past = txn.open_table(PAST).unwrap();
            let mut by_key = txn.open_table(FORMAT_2_BY_KEY).unwrap();
            for (key, at, mod_revision, value) in versions {
                let version = PastVersion {
                    superseded_at: *at,
                    record: KeyRecord {
                        create_revision: 1,
                        mod_revision: *mod_revision,
                        version: 1,
                        value: Bytes::from(value.to_string()),
                    },
                };
                past.insert((*at, key.as_bytes()), encode_past(&version).as_slice())
                    .unwrap();
                by_key.insert((key.as_bytes(), *mod_revision), *at).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_format_2_file_is_converted_and_its_history_found_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let state = DurableState {
            applied: 12,
            revision: 9,
            compact_revision: 0,
            size_bytes: 12,
        };
        write_format_2(
            &path,
            &state,
            &[("a", 4, 1, "a1"), ("b", 5, 2, "b1"), ("a", 9, 4, "a2")],
        );
        let opened = DurableKeyspace::open(&path, 1 << 20).unwrap();
        assert_eq!(opened.state, state);
        let ks = opened.keyspace;
        assert_eq!(
            versions_of(&ks, "a"),
            [(4, 1, "a1".to_string()), (9, 4, "a2".to_string())]
        );
        assert_eq!(versions_of(&ks, "b"), [(5, 2, "b1".to_string())]);
        let with_history: Vec<Bytes> = ks
            .dead_keys_with_history((Bound::Excluded(b"a".as_slice()), Bound::Unbounded))
            .collect();
        assert_eq!(with_history, [Bytes::from("b")]);
        assert_eq!(ks.past_count(), 3);
        let txn = ks.db.begin_read().unwrap();
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        assert!(!names.contains(&"past_by_key".to_string()), "{names:?}");
        let meta = txn.open_table(META).unwrap();
        let format = meta.get("format").unwrap().unwrap().value().to_vec();
        assert_eq!(format, FORMAT.to_le_bytes());
    }

    /// A snapshot's history restored into the keyspace: a key deleted before the snapshot,
    /// with kept versions, is found by reads at past revisions (the keyspace was never told
    /// of its removal).
    #[test]
    fn a_restored_history_finds_the_keys_deleted_before_the_snapshot() {
        use crate::proto::mvccpb::KeyValue;
        use crate::store::KvStore;

        let kv = |key: &str, mod_revision: i64, value: &str| KeyValue {
            key: Bytes::from(key.to_string()),
            create_revision: 2,
            mod_revision,
            version: 1,
            value: Bytes::from(value.to_string()),
            lease: 0,
        };
        let restore = |mut data: Box<dyn Keyspace>| {
            data.begin_batch().unwrap();
            // `live` was put at 2; `gone` was put at 2 and deleted at 3.
            KvStore::restore(data, [kv("live", 2, "l")], [(kv("gone", 2, "g"), 3)], 3, 0).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let durable = DurableKeyspace::open(&dir.path().join("kv.redb"), 1 << 20)
            .unwrap()
            .keyspace;
        let durable = restore(Box::new(durable));
        let memory = restore(Box::<MemoryKeyspace>::default());
        let all = (Bound::Unbounded, Bound::Unbounded);
        let keys: Vec<Bytes> = durable.keys_in(all).collect();
        assert_eq!(keys, [Bytes::from("gone"), Bytes::from("live")]);
        assert_eq!(contents(&*durable.data), contents(&*memory.data));
    }

    use super::xorshift::Rng;

    /// Everything a reader can learn from `ks`, to compare two keyspaces.
    fn contents(ks: &dyn Keyspace) -> String {
        let all = (Bound::Unbounded, Bound::Unbounded);
        let live: Vec<_> = ks.live(all).collect();
        // Which keys a keyspace yields as maybe dead may differ (live ones are allowed), but
        // each must have kept versions; compared are those and the live keys that have some.
        let maybe_dead: Vec<Bytes> = ks.dead_keys_with_history(all).collect();
        let without = maybe_dead.iter().find(|k| ks.history(k).is_empty());
        assert!(without.is_none(), "{without:?} has no kept versions");
        let mut with_history: Vec<Bytes> = live
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !ks.history(k).is_empty())
            .chain(maybe_dead)
            .collect();
        with_history.sort();
        with_history.dedup();
        let histories: Vec<_> = with_history.iter().map(|k| ks.history(k)).collect();
        let in_order: Vec<_> = ks.past_in_order().collect();
        format!(
            "live {live:?}\nwith history {with_history:?}\nhistories {histories:?}\n\
             in order {in_order:?}\ncounts {} {}",
            ks.live_count(),
            ks.past_count()
        )
    }

    /// One write at `revision` to both keyspaces, as the store makes it: a put or a delete
    /// of one of 12 keys, the replaced version kept.
    fn write(rng: &mut Rng, revision: i64, both: [&mut dyn Keyspace; 2]) {
        let key = Bytes::from(format!("k{:02}", rng.below(12)));
        let delete = rng.below(5) == 0;
        // A put through `replace` (one lookup) or through `get` then `insert`.
        let replace = rng.below(2) == 0;
        let after = |prev: Option<&KeyRecord>| {
            let (create_revision, version) =
                prev.map_or((revision, 1), |p| (p.create_revision, p.version + 1));
            KeyRecord {
                value: Bytes::from(format!("v{revision}")),
                create_revision,
                mod_revision: revision,
                version,
            }
        };
        for ks in both {
            let prev = if delete {
                let prev = ks.get(&key);
                ks.remove(&key);
                prev
            } else if replace {
                ks.replace(key.clone(), &mut |prev| after(prev))
            } else {
                let prev = ks.get(&key);
                ks.insert(key.clone(), after(prev.as_ref()));
                prev
            };
            if let Some(record) = prev {
                let past = PastVersion {
                    record,
                    superseded_at: revision,
                };
                ks.push_past(key.clone(), past);
            }
        }
    }

    /// Holds (`true`) or lets go (`false`) the syncs `ks` hands to a thread.
    fn hold_syncs(ks: &DurableKeyspace, held: bool) {
        set_hold(&ks.hold, held);
    }

    fn set_hold(hold: &(Mutex<bool>, std::sync::Condvar), held: bool) {
        let (flag, wake) = hold;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = held;
        wake.notify_all();
    }

    /// One ended batch of random writes at `revisions` (as the memory keyspace gets them).
    fn random_batch(ks: &mut DurableKeyspace, revisions: std::ops::Range<i64>) {
        ks.begin().unwrap();
        for revision in revisions.clone() {
            let mut rng = Rng(revision as u64);
            write(&mut rng, revision, [&mut MemoryKeyspace::default(), ks]);
        }
        let state = DurableState {
            applied: revisions.end as u64,
            revision: revisions.end - 1,
            ..DurableState::default()
        };
        ks.commit(&state, None, false).unwrap();
    }

    #[test]
    fn the_keyspace_agrees_with_the_memory_one_through_syncs_compactions_aborts_and_restarts() {
        for seed in 1..=8u64 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kv.redb");
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut memory = MemoryKeyspace::default();
            // Odd seeds hold only a few past versions in memory: the rest are written into
            // the open transaction as they come.
            let open = || {
                let mut ks = DurableKeyspace::open(&path, 1 << 20).unwrap().keyspace;
                if seed % 2 == 1 {
                    ks.recent_limit = 40;
                }
                ks
            };
            let mut durable = open();
            let mut revision = 1i64;
            let mut compacted = 0i64;
            let mut held = false;
            for step in 0..300 {
                let state = DurableState {
                    applied: step,
                    revision,
                    compact_revision: compacted,
                    size_bytes: 0,
                };
                let choice = rng.below(24);
                // What waits for a sync running on its thread lets a held one go first (a
                // compaction does not wait: it goes on with the sync held).
                if held && choice < 2 {
                    hold_syncs(&durable, false);
                    held = false;
                }
                match choice {
                    // The next sync is handed to a thread and held there: the batches after
                    // it are applied into `Pending` and read through it.
                    20 if !held => {
                        hold_syncs(&durable, true);
                        held = true;
                        durable.sync_next = true;
                    }
                    21 if held => {
                        hold_syncs(&durable, false);
                        held = false;
                    }
                    // A clean stop and a restart: the index is built from the file. Half
                    // the time the stop itself commits the open group (with the past
                    // versions kept in memory since it began).
                    0 => {
                        if rng.below(2) == 0 {
                            durable.commit(&state, None, true).unwrap();
                        }
                        drop(durable);
                        durable = open();
                    }
                    // A batch that fails: its writes never happened, in the index either.
                    1 => {
                        durable.commit(&state, None, true).unwrap();
                        durable.begin().unwrap();
                        for _ in 0..3 {
                            revision += 1;
                            write(&mut rng, revision, [&mut memory.clone(), &mut durable]);
                        }
                        durable.abort_batch();
                    }
                    // A compaction through a recent revision.
                    2..=4 => {
                        compacted = compacted.max(revision - rng.below(8) as i64);
                        durable.begin().unwrap();
                        let (mut a, mut b) = (Vec::new(), Vec::new());
                        memory.drop_past_through(compacted, &mut |k, r| {
                            a.push((k.to_vec(), r.clone()))
                        });
                        durable.drop_past_through(compacted, &mut |k, r| {
                            b.push((k.to_vec(), r.clone()))
                        });
                        assert_eq!(a, b, "seed {seed} step {step}: what compaction dropped");
                        durable.commit(&state, None, false).unwrap();
                    }
                    // A batch of writes, committed (synced now and then).
                    _ => {
                        durable.begin().unwrap();
                        for _ in 0..=rng.below(4) {
                            revision += 1;
                            write(&mut rng, revision, [&mut memory, &mut durable]);
                        }
                        // (A sync asked for waits for one running: not while it is held.)
                        let sync = rng.below(4) == 0 && !held;
                        durable.commit(&state, None, sync).unwrap();
                    }
                }
                assert_eq!(durable.take_error(), None, "seed {seed} step {step}");
                assert_eq!(
                    contents(&durable),
                    contents(&memory),
                    "seed {seed} step {step}"
                );
            }
            hold_syncs(&durable, false);
        }
    }

    /// Writes one batch of puts at `revisions` and hands its sync to a thread that is held.
    fn puts_then_held_sync(ks: &mut DurableKeyspace, revisions: std::ops::Range<i64>) {
        hold_syncs(ks, true);
        ks.sync_next = true;
        random_batch(ks, revisions);
        assert!(ks.syncing.is_some(), "the sync runs on its thread");
    }

    #[test]
    fn a_frozen_view_holds_every_ended_batch_and_nothing_applied_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let mut ks = DurableKeyspace::open(&path, 1 << 20).unwrap().keyspace;
        // Batches in the open transaction, then more applied while a sync runs (`Pending`):
        // the view waits for the sync and holds both.
        puts_then_held_sync(&mut ks, 1..40);
        random_batch(&mut ks, 40..60);
        assert!(ks.syncing.is_some(), "held");
        let releaser = {
            let hold = Arc::clone(&ks.hold);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                set_hold(&hold, false);
            })
        };
        let live: Vec<_> = ks.live((Bound::Unbounded, Bound::Unbounded)).collect();
        let past: Vec<_> = ks.past_in_order().collect();
        let frozen = ks.freeze().unwrap().unwrap();
        releaser.join().unwrap();
        // Later batches change the keyspace, not the view.
        random_batch(&mut ks, 60..90);
        let read_back = |frozen: &dyn FrozenKeyspace| {
            let (mut l, mut p) = (Vec::new(), Vec::new());
            frozen
                .each_live(&mut |k, r| {
                    l.push((k, r));
                    Ok(())
                })
                .unwrap();
            frozen
                .each_past(&mut |k, v| {
                    p.push((k, v));
                    Ok(())
                })
                .unwrap();
            (l, p)
        };
        let (frozen_live, frozen_past) = read_back(frozen.as_ref());
        assert!(!frozen_past.is_empty(), "the writes replaced versions");
        assert_eq!(frozen_live, live);
        assert_eq!(frozen_past, past);
        assert_ne!(
            ks.past_in_order().count(),
            frozen_past.len(),
            "the later batches replaced more versions"
        );
        // A failure of the caller's writer stops the walk and comes back.
        let err = frozen
            .each_live(&mut |_, _| Err(std::io::Error::other("disk full")))
            .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
    }

    #[test]
    fn what_is_applied_while_a_sync_runs_is_kept_at_a_stop_unless_a_batch_was_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let mut ks = DurableKeyspace::open(&path, 1 << 20).unwrap().keyspace;
        puts_then_held_sync(&mut ks, 1..20);
        // A finished batch while the sync is held, then a clean stop.
        ks.begin().unwrap();
        ks.insert(
            Bytes::from("late"),
            KeyRecord {
                value: Bytes::from("v"),
                create_revision: 20,
                mod_revision: 20,
                version: 1,
            },
        );
        let finished = DurableState {
            applied: 21,
            revision: 20,
            ..DurableState::default()
        };
        ks.commit(&finished, Some(&b"cluster"[..]), false).unwrap();
        assert!(ks.syncing.is_some(), "still held");
        let before = contents(&ks);
        hold_syncs(&ks, false);
        drop(ks);
        let opened = DurableKeyspace::open(&path, 1 << 20).unwrap();
        assert_eq!(opened.state, finished);
        assert_eq!(opened.cluster.as_deref(), Some(&b"cluster"[..]));
        assert_eq!(contents(&opened.keyspace), before);
        let mut ks = opened.keyspace;

        // Now a batch left unfinished while the sync is held: at the stop, everything since
        // the sync began is abandoned (the log replays it), the file is as of the sync.
        puts_then_held_sync(&mut ks, 21..30);
        let as_of_sync = contents(&ks);
        ks.begin().unwrap();
        ks.remove(b"late");
        // (A compaction in it too: what it forgot, in the file and in what the sync writes,
        // is kept.)
        ks.drop_past_through(25, &mut |_, _| {});
        assert_ne!(contents(&ks), as_of_sync);
        hold_syncs(&ks, false);
        drop(ks);
        let opened = DurableKeyspace::open(&path, 1 << 20).unwrap();
        assert_eq!(opened.state.applied, 30);
        assert_eq!(contents(&opened.keyspace), as_of_sync);
    }

    #[test]
    fn kept_past_versions_hold_no_part_of_the_applied_entries() {
        // The key (and, while a sync runs, the value) of a replaced version can be a slice of
        // a large applied entry; what the keyspace keeps until the group's commit must not
        // hold that entry alive, or its bound would count a few bytes for a megabyte.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let mut ks = DurableKeyspace::open(&path, 1 << 20).unwrap().keyspace;
        let version = |value: Bytes, at: i64| PastVersion {
            record: KeyRecord {
                value,
                create_revision: 1,
                mod_revision: at - 1,
                version: 1,
            },
            superseded_at: at,
        };
        // Outside a sync the replaced value was decoded from the file (its own bytes).
        let entry = Bytes::from(vec![7u8; 1 << 20]);
        ks.begin().unwrap();
        ks.push_past(entry.slice(0..4), version(Bytes::from("old"), 2));
        assert!(entry.is_unique(), "a kept version holds the applied entry");
        // While a sync runs it can be a slice of the entry that set it.
        puts_then_held_sync(&mut ks, 3..5);
        let entry = Bytes::from(vec![9u8; 1 << 20]);
        ks.begin().unwrap();
        ks.push_past(entry.slice(0..4), version(entry.slice(8..16), 6));
        assert!(entry.is_unique(), "a kept version holds the applied entry");
        let history = ks.history(&entry[0..4]);
        assert_eq!(
            history.last().map(|p| p.record.value.clone()),
            Some(entry.slice(8..16))
        );
        hold_syncs(&ks, false);
    }

    #[test]
    fn a_batch_abandoned_while_a_sync_runs_leaves_the_keyspace_as_of_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let mut ks = DurableKeyspace::open(&path, 1 << 20).unwrap().keyspace;
        puts_then_held_sync(&mut ks, 1..40);
        let as_of_sync = contents(&ks);
        ks.begin().unwrap();
        for revision in 40..50 {
            let mut rng = Rng(revision as u64);
            write(
                &mut rng,
                revision,
                [&mut MemoryKeyspace::default(), &mut ks],
            );
        }
        // A compaction in the abandoned batch forgets versions the held sync writes:
        // abandoned with it, they are all kept.
        ks.drop_past_through(45, &mut |_, _| {});
        assert_ne!(contents(&ks), as_of_sync);
        ks.abort_batch();
        assert_eq!(contents(&ks), as_of_sync);
        hold_syncs(&ks, false);
        // Applying goes on once the sync ends, into a transaction again.
        ks.begin().unwrap();
        ks.commit(&DurableState::default(), None, true).unwrap();
        assert!(ks.syncing.is_none() && ks.write.is_none());
        assert_eq!(contents(&ks), as_of_sync);
    }

    #[test]
    fn a_group_ends_at_a_second_with_enough_changes_else_at_ten_seconds() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert!(!group_ends(ms(999), 1_000_000), "never before a second");
        assert!(!group_ends(s(1), GROUP_CHANGES - 1));
        assert!(group_ends(s(1), GROUP_CHANGES));
        assert!(!group_ends(ms(9_999), 0));
        assert!(group_ends(s(10), 0));

        // The keyspace counts its changes: a group a second old ends at the batch that
        // brings it to GROUP_CHANGES, not before.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let mut ks = DurableKeyspace::open(&path, 1 << 20).unwrap().keyspace;
        let batch = |ks: &mut DurableKeyspace, from: u64, n: u64| {
            ks.begin().unwrap();
            for i in from..from + n {
                let record = KeyRecord {
                    value: Bytes::from_static(b"v"),
                    create_revision: 1,
                    mod_revision: 1,
                    version: 1,
                };
                ks.insert(Bytes::from(format!("k{}", i % 100)), record);
            }
            ks.commit(&DurableState::default(), None, false).unwrap();
        };
        batch(&mut ks, 0, GROUP_CHANGES - 1);
        ks.opened = Instant::now() - s(1);
        batch(&mut ks, 0, 0);
        assert!(
            ks.write.is_some() && ks.syncing.is_none(),
            "the group goes on"
        );
        batch(&mut ks, 0, 1);
        assert!(
            ks.write.is_none() && ks.syncing.is_some(),
            "the group ended"
        );
        assert_eq!(ks.changes, 0);
    }
}
