//! [`Store`]: one generic [`LogStore`] (and [`Reader`], its [`LogReader`]) for every durable
//! backend. A backend implements [`SyncLog`] — synchronous, blocking calls on its database,
//! written as if there were one caller at a time for writes — and `Store<ItsLog>` does the
//! rest, identically for all of them:
//!
//! * opening: the store directory's marker is checked before the database is touched and
//!   written last when a store is created ([`marker`](crate::marker)), and a panic inside the
//!   engine while opening becomes an error;
//! * writes in the order of the *calls*, one at a time, carried out when the method is called
//!   (not when its future is first polled): on a multi-thread runtime in place, inside
//!   [`tokio::task::block_in_place`] (the calling task waits, the thread's other tasks move
//!   to another thread), on a current-thread runtime on tokio's blocking pool;
//! * reads on the blocking pool (async API) or on the caller's thread (the core's reader);
//! * a panic inside the database turned into [`StorageError::Backend`].
//!
//! So the calls never stall other tasks, and they must be made inside a tokio runtime
//! (outside one they fail with [`StorageError::Backend`] saying so). Because a write is done
//! by the time its method returns on a multi-thread runtime, a caller that wants a write to
//! overlap other work of its own runs it in a task of its own (as the runtime does), and a
//! timeout around the returned future cannot interrupt it. N concurrent `persist` calls are
//! applied one after the other; the runtime batches instead (one `persist` per `Ready`, many
//! proposals per `Ready`). Dropping a write's future does not cancel the write.
//!
//! A backend crate then names its store: `pub type RedbStore = Store<RedbLog>;`.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use dengine_core::{
    Entry, LogIndex, LogReader, LogStore, PersistRequest, SnapshotMeta, StorageError, StoredState,
    Term,
};

use crate::blocking::{self, Sequencer, blocking_read, catch_panic, guarded, ordered_write};
use crate::bounds::Bounds;
use crate::codec::Marker;
use crate::marker::{self, DirState};

/// What a backend is called and how its store directory is recognised: the name and format
/// version its marker carries, and what an interrupted creation may leave behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreKind {
    /// The backend's name, in the marker and in messages (`"redb"`).
    pub name: &'static str,
    /// The backend's on-disk format version, in the marker.
    pub format_version: u32,
    /// Names, inside the store directory, that an interrupted creation (a crash before the
    /// marker was written) may have left: `open_or_create` clears them and starts over.
    pub leftovers: &'static [&'static str],
}

impl StoreKind {
    /// A backend called `name`, writing format `format_version`, whose interrupted creation
    /// may leave `leftovers`.
    pub const fn new(
        name: &'static str,
        format_version: u32,
        leftovers: &'static [&'static str],
    ) -> Self {
        StoreKind {
            name,
            format_version,
            leftovers,
        }
    }

    /// The marker this backend writes and accepts.
    pub fn marker(&self) -> Marker {
        Marker {
            backend: self.name.into(),
            format: self.format_version,
        }
    }
}

/// A backend's log, with blocking calls: what a database-specific crate implements to get a
/// [`Store`]. Each method does what the [`LogStore`] method of the same name does (see its
/// contract), synchronously.
///
/// [`Store`] calls the write methods (`persist`, `purge`, `save_snapshot_meta`,
/// `reset_to_snapshot`, `sync`) one at a time, in call order; reads may run at any time,
/// concurrently with each other and with a write, and must see every write that has returned.
pub trait SyncLog: Send + Sync + Sized + 'static {
    /// What the backend is called and how its store directory is recognised.
    const KIND: StoreKind;

    /// Backend settings (`()` for a backend without any).
    type Options: Clone + Default + Send + Sync + 'static;

    /// Opens the database in the store directory `dir`, whose marker has been checked:
    /// [`DirState::Existing`] (the database must be there; if it is not, fail with
    /// [`StorageError::NotFound`] rather than start an empty log) or [`DirState::New`] (create
    /// it; the marker is written after this returns). Runs on the caller's thread.
    fn open(dir: &Path, state: DirState, options: Self::Options) -> Result<Self, StorageError>;

    /// The database file or directory, as error messages name it.
    fn path(&self) -> &Path;

    /// The log's shape, from memory: [`LogReader::first_index`] and
    /// [`LogReader::last_index`].
    fn bounds(&self) -> Bounds;
    /// [`LogReader::term`].
    fn term(&self, index: LogIndex) -> Result<Term, StorageError>;
    /// [`LogStore::read_entries`] (and [`LogReader::entries`]).
    fn read(&self, range: Range<LogIndex>, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    /// [`LogStore::load_state`].
    fn load_state(&self) -> Result<StoredState, StorageError>;

    /// [`LogStore::persist`].
    fn persist(&self, req: &PersistRequest) -> Result<(), StorageError>;
    /// Whether `persist(req)`, if it ran now, would only copy a few bytes into memory or the
    /// page cache: no sync, no file created, grown or renamed. [`Store`] then runs it on the
    /// caller's thread when no other write is in progress, instead of first handing that
    /// thread's other tasks to another thread (a thread wake-up, which costs more than such
    /// a write). Called only when no other write is running. The default, `false`, is always
    /// safe.
    fn writes_in_place(&self, req: &PersistRequest) -> bool {
        let _ = req;
        false
    }
    /// [`LogStore::purge`].
    fn purge(&self, up_to: LogIndex) -> Result<(), StorageError>;
    /// [`LogStore::save_snapshot_meta`] (`reset == false`) or [`LogStore::reset_to_snapshot`]
    /// (`reset == true`): both record `meta`, a reset also restarts the log right after it.
    fn snapshot(&self, meta: &SnapshotMeta, reset: bool) -> Result<(), StorageError>;
    /// [`LogStore::sync`].
    fn sync(&self) -> Result<(), StorageError>;
}

struct Shared<B> {
    log: B,
    /// Applies writes one at a time, in the order the calls were made.
    sequencer: Sequencer,
}

impl<B: SyncLog> blocking::Blocking for Shared<B> {
    const NAME: &'static str = B::KIND.name;

    fn path(&self) -> &Path {
        self.log.path()
    }

    fn sequencer(&self) -> &Sequencer {
        &self.sequencer
    }
}

/// A durable [`LogStore`] on the backend `B`. Cheap to clone; clones share the database.
pub struct Store<B> {
    shared: Arc<Shared<B>>,
}

/// The synchronous [`LogReader`] view of a [`Store`] (what [`LogStore::reader`] hands out).
pub struct Reader<B> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for Store<B> {
    fn clone(&self) -> Self {
        Store {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<B> Clone for Reader<B> {
    fn clone(&self) -> Self {
        Reader {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<B: SyncLog> fmt::Debug for Store<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &B::KIND.name)
            .field("path", &self.shared.log.path())
            .finish_non_exhaustive()
    }
}

impl<B: SyncLog> fmt::Debug for Reader<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("backend", &B::KIND.name)
            .field("path", &self.shared.log.path())
            .finish_non_exhaustive()
    }
}

impl<B: SyncLog> Store<B> {
    /// Opens the store in `dir`, creating it if `dir` is missing or empty (or holds only the
    /// leftovers of an interrupted creation). Blocks (it may recover a crashed database): do
    /// it before starting the node.
    pub fn open_or_create(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_dir(dir.as_ref(), true, B::Options::default())
    }

    /// Opens the existing store in `dir`; [`StorageError::NotFound`] if there is none (a node
    /// whose log vanished must not silently restart with an empty log, forgetting the votes it
    /// cast). A directory written by another backend or a newer format is refused with
    /// [`StorageError::FormatMismatch`]. Blocks.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_dir(dir.as_ref(), false, B::Options::default())
    }

    /// [`open_or_create`](Self::open_or_create) with explicit backend options.
    pub fn open_or_create_with(
        dir: impl AsRef<Path>,
        options: B::Options,
    ) -> Result<Self, StorageError> {
        Self::open_dir(dir.as_ref(), true, options)
    }

    /// [`open`](Self::open) with explicit backend options.
    pub fn open_with(dir: impl AsRef<Path>, options: B::Options) -> Result<Self, StorageError> {
        Self::open_dir(dir.as_ref(), false, options)
    }

    /// The database file or directory.
    pub fn path(&self) -> &Path {
        self.shared.log.path()
    }

    /// The backend underneath, for what only it offers (its recovery notes, say). Calling its
    /// write methods directly bypasses the call-order guarantee: do not.
    pub fn backend(&self) -> &B {
        &self.shared.log
    }

    /// `save_snapshot_meta` (`reset == false`) and `reset_to_snapshot` (`reset == true`).
    fn snapshot(
        &self,
        meta: &SnapshotMeta,
        reset: bool,
    ) -> impl Future<Output = Result<(), StorageError>> + Send + 'static {
        let meta = meta.clone();
        let op = if reset {
            "installing a snapshot in"
        } else {
            "saving snapshot meta to"
        };
        ordered_write(&self.shared, op, move |s| s.log.snapshot(&meta, reset))
    }

    fn open_dir(dir: &Path, create: bool, options: B::Options) -> Result<Self, StorageError> {
        let expected = B::KIND.marker();
        let state = marker::prepare(dir, &expected, create, B::KIND.leftovers)?;
        let log = catch_panic(dir, "opening", B::KIND.name, || {
            B::open(dir, state, options)
        })?;
        if state == DirState::New {
            // The marker goes last: it is what makes the new store exist.
            marker::write(dir, &expected)?;
        }
        Ok(Store {
            shared: Arc::new(Shared {
                log,
                sequencer: Sequencer::default(),
            }),
        })
    }
}

impl<B: SyncLog> LogStore for Store<B> {
    type Reader = Reader<B>;

    fn reader(&self) -> Reader<B> {
        Reader {
            shared: Arc::clone(&self.shared),
        }
    }

    fn load_state(&self) -> impl Future<Output = Result<StoredState, StorageError>> + Send {
        blocking_read(&self.shared, "loading state from", |s| s.log.load_state())
    }

    fn persist(
        &self,
        req: &PersistRequest,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        // Cloning is cheap: payloads are reference-counted `Bytes`.
        let owned = req.clone();
        let op = "persisting to";
        let started = if req.must_sync {
            blocking::start_write(&self.shared, op, move |s| s.log.persist(&owned))
        } else {
            blocking::start_small_write(
                &self.shared,
                op,
                |s| s.log.writes_in_place(req),
                move |s| s.log.persist(&owned),
            )
        };
        blocking::finish(&self.shared, op, started)
    }

    fn read_entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<Entry>, StorageError>> + Send {
        blocking_read(&self.shared, "reading entries from", move |s| {
            s.log.read(low..high, max_bytes)
        })
    }

    fn purge(&self, up_to: LogIndex) -> impl Future<Output = Result<(), StorageError>> + Send {
        ordered_write(&self.shared, "purging", move |s| s.log.purge(up_to))
    }

    fn save_snapshot_meta(
        &self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        self.snapshot(meta, false)
    }

    fn reset_to_snapshot(
        &self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        self.snapshot(meta, true)
    }

    fn sync(&self) -> impl Future<Output = Result<(), StorageError>> + Send {
        ordered_write(&self.shared, "syncing", |s| s.log.sync())
    }
}

impl<B: SyncLog> LogReader for Reader<B> {
    fn first_index(&self) -> LogIndex {
        self.shared.log.bounds().first_index()
    }

    fn last_index(&self) -> LogIndex {
        self.shared.log.bounds().last_index
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        guarded(&*self.shared, "reading", |s| s.log.term(index))
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        let entries = guarded(&*self.shared, "reading", |s| {
            s.log.read(low..high, max_bytes)
        })?;
        out.extend(entries);
        Ok(())
    }
}
