//! The [`StateMachine`] contract: what the runtime applies committed commands to.

use std::future::Future;
use std::io;

use bytes::Bytes;

use super::snapshot_data::SnapshotData;
use crate::types::{LogIndex, SnapshotMeta};

/// The error of the streaming snapshot calls ([`StateMachine::write_snapshot`],
/// [`StateMachine::install_snapshot_from`]): the state machine's own error or an I/O error of
/// the snapshot's file, boxed. The runtime treats it as it treats [`StateMachine::Error`].
pub type SnapshotIoError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A frozen view of a state machine's state (a database's read transaction, a clone of a
/// persistent data structure), taken by [`StateMachine::snapshot_view`] and written out by
/// the runtime on another thread while the state machine goes on applying commands.
pub trait SnapshotView: Send + 'static {
    /// Writes the state as of the moment the view was taken to `out` (blocking writes into
    /// the snapshot file), in the format [`StateMachine::install_snapshot_from`] reads.
    fn write_to(self: Box<Self>, out: &mut (dyn io::Write + Send)) -> Result<(), SnapshotIoError>;
}

/// A snapshot as the runtime keeps and ships it: the state machine's serialized state and
/// what it covers (the last entry folded in, and the cluster configuration at that point).
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The last entry folded in, and the membership at that point (the runtime's bookkeeping).
    pub meta: SnapshotMeta,
    /// The serialized state, opaque to Raft: what [`StateMachine::write_snapshot`] wrote and
    /// [`StateMachine::install_snapshot_from`] reads back; in memory, or in a file.
    pub data: SnapshotData,
}

/// A committed command, as the state machine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Its position in the log; increasing, not necessarily consecutive (the entries in
    /// between are Raft's own: a new leader's blank entry, configuration changes).
    pub index: LogIndex,
    /// What the client proposed.
    pub data: Bytes,
}

/// The replicated application. The runtime calls it off the protocol loop, one call at a time
/// (`&mut self`), with the committed commands in log order. Everything else in the log
/// (elections' blank entries, membership changes) and the snapshots' metadata are the
/// runtime's business: a state machine sees only what clients proposed.
///
/// # Contract
///
/// * **Apply.** [`apply`](StateMachine::apply) gets each committed command once in normal
///   operation, in log order, and returns one response per command, in the same order.
///   `applied_up_to` is the index of the last log entry the call covers: the last command's,
///   or later when Raft entries without a command follow it (then `commands` may be empty).
/// * **Restart.** A state machine that keeps its state across restarts (durable) stores
///   `applied_up_to` **in the same atomic write** as the effects of the commands (one
///   transaction, or one file written and renamed), and returns it from
///   [`applied_index`](StateMachine::applied_index) after a restart. The runtime then resumes
///   with the command after it: nothing is applied twice, nothing skipped. Storing the index
///   apart from the data (first one, then the other) breaks this after a crash between the
///   two. The runtime restores everything else (the configuration as of that index) from its
///   own log and snapshots. A state machine that keeps nothing (like `MemoryStateMachine`,
///   feature `memory`) leaves `applied_index` at its default, 0, and is rebuilt from the
///   newest snapshot and the log on every start.
/// * **Determinism.** The responses and the resulting state depend only on the commands,
///   never on time, randomness or the node: all replicas must agree.
/// * **Errors.** An `Err` from `apply`, `snapshot` or `install_snapshot` means the state
///   machine can no longer be trusted (a failed disk); the runtime stops the node and reports
///   the error. A command the application refuses ("key not found", "wrong type") is an
///   ordinary response, the same on every replica, never an `Err`.
///
/// # A durable state machine
///
/// ```
/// use std::path::PathBuf;
///
/// use bytes::Bytes;
/// use dengine_core::LogIndex;
/// use dengine_core::store::{Command, StateMachine};
///
/// /// A counter kept in a file: the total and the applied index, written together.
/// struct FileCounter {
///     path: PathBuf,
///     total: i64,
///     applied: LogIndex,
/// }
///
/// impl FileCounter {
///     fn open(path: PathBuf) -> std::io::Result<Self> {
///         let (total, applied) = match std::fs::read(&path) {
///             Ok(b) if b.len() == 16 => (
///                 i64::from_le_bytes(b[..8].try_into().unwrap()),
///                 u64::from_le_bytes(b[8..].try_into().unwrap()),
///             ),
///             Ok(_) => return Err(std::io::Error::other("damaged counter file")),
///             Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0),
///             Err(e) => return Err(e),
///         };
///         Ok(FileCounter { path, total, applied })
///     }
///
///     /// State and index in one atomic step: a new file, synced, renamed over the old one.
///     fn save(&self) -> std::io::Result<()> {
///         let mut bytes = self.total.to_le_bytes().to_vec();
///         bytes.extend_from_slice(&self.applied.to_le_bytes());
///         let tmp = self.path.with_extension("tmp");
///         let file = std::fs::File::create(&tmp)?;
///         std::io::Write::write_all(&mut &file, &bytes)?;
///         file.sync_all()?;
///         std::fs::rename(&tmp, &self.path)
///         // (a production store also syncs the directory after the rename)
///     }
/// }
///
/// impl StateMachine for FileCounter {
///     type Error = std::io::Error;
///
///     async fn apply(
///         &mut self,
///         commands: &[Command],
///         applied_up_to: LogIndex,
///     ) -> std::io::Result<Vec<Bytes>> {
///         let mut responses = Vec::with_capacity(commands.len());
///         for c in commands {
///             let add = <[u8; 8]>::try_from(c.data.as_ref()).map_or(0, i64::from_le_bytes);
///             self.total = self.total.wrapping_add(add);
///             responses.push(Bytes::copy_from_slice(&self.total.to_le_bytes()));
///         }
///         self.applied = applied_up_to;
///         self.save()?; // effects and index together
///         Ok(responses)
///     }
///
///     fn applied_index(&self) -> LogIndex {
///         self.applied
///     }
///
///     async fn snapshot(&mut self) -> std::io::Result<Bytes> {
///         Ok(Bytes::copy_from_slice(&self.total.to_le_bytes()))
///     }
///
///     async fn install_snapshot(&mut self, data: Bytes, applied_up_to: LogIndex) -> std::io::Result<()> {
///         let bytes = <[u8; 8]>::try_from(data.as_ref())
///             .map_err(|_| std::io::Error::other("a counter snapshot is 8 bytes"))?;
///         self.total = i64::from_le_bytes(bytes);
///         self.applied = applied_up_to;
///         self.save()
///     }
///
///     async fn query(&self, _request: Bytes) -> std::io::Result<Bytes> {
///         Ok(Bytes::copy_from_slice(&self.total.to_le_bytes()))
///     }
/// }
///
/// # tokio_test_block_on(async {
/// let dir = std::env::temp_dir().join(format!("dengine-doc-counter-{}", std::process::id()));
/// let mut c = FileCounter::open(dir.clone()).unwrap();
/// let add = |n: i64, index| Command { index, data: Bytes::copy_from_slice(&n.to_le_bytes()) };
/// c.apply(&[add(5, 3), add(2, 4)], 6).await.unwrap();
/// let reopened = FileCounter::open(dir.clone()).unwrap();
/// assert_eq!((reopened.total, reopened.applied_index()), (7, 6));
/// std::fs::remove_file(&dir).unwrap();
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let mut f = std::pin::pin!(f);
/// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
/// #     loop {
/// #         if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
/// #             return out;
/// #         }
/// #     }
/// # }
/// ```
pub trait StateMachine: Send + 'static {
    /// How the state machine fails: its storage, not a refused command (see the contract).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies committed commands in log order and returns one response per command; the
    /// call covers the log up to `applied_up_to`.
    fn apply(
        &mut self,
        commands: &[Command],
        applied_up_to: LogIndex,
    ) -> impl Future<Output = Result<Vec<Bytes>, Self::Error>> + Send;

    /// The index the current state covers: for a durable state machine, the `applied_up_to`
    /// stored with its state. The runtime asks once, at start; a state machine that starts
    /// empty may keep the default, 0 (or report the index it has reached in memory, which is
    /// 0 at start all the same).
    fn applied_index(&self) -> LogIndex {
        0
    }

    /// Whether the state machine keeps its state across restarts (see "Restart" in the
    /// contract). A durable state machine can build a snapshot from its own storage whenever
    /// one is needed, so the runtime does not hold the newest snapshot in memory between the
    /// times a follower needs one, and at start it reads only the metadata of snapshot files
    /// the state already covers. Default: `false`.
    fn durable(&self) -> bool {
        false
    }

    /// Serializes the current state (everything applied so far). The runtime calls
    /// [`write_snapshot`](Self::write_snapshot), which calls this unless it is overridden.
    fn snapshot(&mut self) -> impl Future<Output = Result<Bytes, Self::Error>> + Send;

    /// Replaces the whole state with a snapshot (received from the leader, or this node's own
    /// after a restart) that covers the log up to `applied_up_to`. The runtime calls
    /// [`install_snapshot_from`](Self::install_snapshot_from), which calls this unless it is
    /// overridden.
    fn install_snapshot(
        &mut self,
        data: Bytes,
        applied_up_to: LogIndex,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Writes the serialized state to `out` (blocking writes, usually into the snapshot file
    /// the runtime is writing, or into memory when the node keeps no snapshot files). Override
    /// it, together with [`install_snapshot_from`](Self::install_snapshot_from), when the
    /// state is too large to hold twice in memory: write it piece by piece from a consistent
    /// view (a read transaction). The runtime calls it off the protocol loop, as it calls
    /// [`snapshot`](Self::snapshot). Default: writes what [`snapshot`](Self::snapshot)
    /// returns.
    fn write_snapshot(
        &mut self,
        out: &mut (dyn io::Write + Send),
    ) -> impl Future<Output = Result<(), SnapshotIoError>> + Send {
        async move {
            let data = self.snapshot().await?;
            out.write_all(&data)?;
            Ok(())
        }
    }

    /// A frozen view of the current state (everything applied so far) that can be written
    /// out while commands go on being applied: the runtime then writes the snapshot on a
    /// thread of its own from the view ([`SnapshotView::write_to`]) instead of calling
    /// [`write_snapshot`](Self::write_snapshot), so a large state's snapshot does not hold up
    /// writes. Taking the view must be quick (a commit and a read transaction, not a copy of
    /// the data). An `Err` is a failed snapshot (the runtime logs it and tries again later).
    /// Default: `Ok(None)`, no view; the snapshot is written by
    /// [`write_snapshot`](Self::write_snapshot) between two applies.
    fn snapshot_view(&mut self) -> Result<Option<Box<dyn SnapshotView>>, SnapshotIoError> {
        Ok(None)
    }

    /// [`install_snapshot`](Self::install_snapshot) from a [`SnapshotData`], which may lie in
    /// a file: read it piece by piece ([`SnapshotData::reader`]) to install a large state
    /// without holding it in memory. A refused snapshot (damaged) must leave the state as it
    /// was. Default: reads the data into memory and calls
    /// [`install_snapshot`](Self::install_snapshot).
    fn install_snapshot_from(
        &mut self,
        data: SnapshotData,
        applied_up_to: LogIndex,
    ) -> impl Future<Output = Result<(), SnapshotIoError>> + Send {
        async move {
            let bytes = data.to_bytes()?;
            self.install_snapshot(bytes, applied_up_to).await?;
            Ok(())
        }
    }

    /// Answers a read-only request against the current state. Linearizability is the
    /// runtime's job (it calls this only once the read's index has been applied).
    fn query(&self, request: Bytes) -> impl Future<Output = Result<Bytes, Self::Error>> + Send;
}
