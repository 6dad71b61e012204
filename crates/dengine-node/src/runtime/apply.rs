//! The apply task: owns the state machine, applies committed entries in order and in
//! batches, answers the waiting proposers, serves queries after the entries before them,
//! and builds and installs snapshots — all off the event loop.

use bytes::Bytes;
use tokio::time::Instant;

use dengine_core::store::{Command, Snapshot, SnapshotData, SnapshotView};
use dengine_core::{
    Entry, EntryId, EntryPayload, LogIndex, LogLimiter, Membership, SnapshotMeta, StateMachine,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;

use super::request::Event;
use crate::error::{ProposeError, ReadError};
use crate::metric_names as m;
use crate::snapshot_dir::{SnapshotDir, SnapshotWriter};

/// A proposer waiting for the response to the entry at `index`.
pub(crate) struct Responder {
    pub(crate) index: LogIndex,
    pub(crate) tx: oneshot::Sender<Result<Bytes, ProposeError>>,
    pub(crate) span: tracing::Span,
}

/// Work for the apply task, executed strictly in the order sent.
pub(crate) enum ApplyCmd {
    /// Apply committed entries (consecutive, in log order) and answer `responders`.
    Apply {
        entries: Vec<Entry>,
        responders: Vec<Responder>,
    },
    /// Answer a read from the state as of every entry sent before.
    Query {
        /// `None`: a barrier, answered with an empty response.
        query: Option<Bytes>,
        tx: oneshot::Sender<Result<Bytes, ReadError>>,
    },
    /// Serialize the state machine (into a new snapshot file when the node keeps them).
    BuildSnapshot,
    /// Replace the state with a snapshot from the leader.
    Install {
        meta: SnapshotMeta,
        data: SnapshotData,
    },
}

/// Runs until the loop drops its sender (or the state machine fails).
///
/// The task keeps the runtime's bookkeeping about the applied state, which the state machine
/// never sees: `last`, the last entry applied (a command or one of Raft's own), and
/// `membership`, the configuration as of it (applied configuration entries change it; the
/// configuration of a bootstrapped cluster is in no entry). Both go into every snapshot the
/// task builds, which it writes into `snapshot_dir` (or memory, without one).
///
/// A state machine that gives a [`SnapshotView`] has its snapshot written from the view on a
/// thread of its own while this task goes on applying (at most one at a time: the loop asks for
/// the next only after the last was reported); the task waits for that write before it ends,
/// so the state machine is never dropped under it.
pub(crate) async fn run<M: StateMachine>(
    mut sm: M,
    snapshot_dir: Option<SnapshotDir>,
    mut rx: mpsc::Receiver<ApplyCmd>,
    applied: watch::Sender<LogIndex>,
    events: mpsc::Sender<Event>,
    mut membership: Membership,
    mut last: EntryId,
) {
    let mut contract_log = LogLimiter::per_ten_seconds();
    let mut background: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            ApplyCmd::Apply {
                entries,
                responders,
            } => {
                let (Some(first), Some(end)) = (entries.first(), entries.last()) else {
                    continue;
                };
                let (first, end) = (first.index, end.id());
                metrics::histogram!(m::APPLY_BATCH_ENTRIES).record(entries.len() as f64);
                let mut commands = Vec::with_capacity(entries.len());
                for entry in entries {
                    match entry.payload {
                        EntryPayload::Normal(data) => commands.push(Command {
                            index: entry.index,
                            data,
                        }),
                        EntryPayload::Membership(m) => membership = m,
                        EntryPayload::Blank => {}
                    }
                }
                match sm.apply(&commands, end.index).await {
                    Ok(responses) => {
                        last = end;
                        if responses.len() != commands.len()
                            && let Some(suppressed) = contract_log.allow(Instant::now().into_std())
                        {
                            tracing::error!(
                                suppressed,
                                "the state machine answered {} commands with {} responses; \
                                 it must answer each command once (the missing ones get an \
                                 empty response)",
                                commands.len(),
                                responses.len()
                            );
                        }
                        for r in responders {
                            let slot = commands.binary_search_by_key(&r.index, |c| c.index).ok();
                            let response = slot.and_then(|i| responses.get(i)).cloned();
                            let _span = r.span.enter();
                            tracing::debug!(index = r.index, "applied");
                            let _ = r.tx.send(Ok(response.unwrap_or_default()));
                        }
                        metrics::gauge!(m::APPLIED_INDEX).set(end.index as f64);
                        applied.send_replace(end.index);
                    }
                    Err(e) => {
                        let reason = format!(
                            "the state machine failed to apply entries {first}..={}: {e}",
                            end.index
                        );
                        for r in responders {
                            let _ = r.tx.send(Err(ProposeError::Stopped {
                                reason: reason.clone(),
                            }));
                        }
                        let _ = events.send(Event::Fatal(reason)).await;
                        break;
                    }
                }
            }
            ApplyCmd::Query { query, tx } => {
                let result = match query {
                    Some(query) => sm
                        .query(query)
                        .await
                        .map_err(|e| ReadError::StateMachine(e.to_string())),
                    None => Ok(Bytes::new()),
                };
                let _ = tx.send(result);
            }
            ApplyCmd::BuildSnapshot => {
                let span = tracing::info_span!("snapshot_build", index = last.index);
                let meta = SnapshotMeta {
                    last_included: last,
                    membership: membership.clone(),
                };
                match sm.snapshot_view() {
                    Ok(Some(view)) => {
                        if let Some(previous) = background.take() {
                            let _ = previous.await;
                        }
                        let write = write_from_view(view, snapshot_dir.clone(), meta);
                        let events = events.clone();
                        background = Some(tokio::spawn(async move {
                            let result = write.instrument(span).await;
                            let _ = events.send(Event::SnapshotBuilt(result)).await;
                        }));
                    }
                    Ok(None) => {
                        let build = build_snapshot(&mut sm, snapshot_dir.as_ref(), meta);
                        let result = long_call(build.instrument(span)).await;
                        let _ = events.send(Event::SnapshotBuilt(result)).await;
                    }
                    Err(e) => {
                        let failed = format!("taking a view of the state for a snapshot: {e}");
                        let _ = events.send(Event::SnapshotBuilt(Err(failed))).await;
                    }
                }
            }
            ApplyCmd::Install { meta, data } => {
                let span =
                    tracing::info_span!("snapshot_install", index = meta.last_included.index);
                let install = sm.install_snapshot_from(data.clone(), meta.last_included.index);
                let result = long_call(install.instrument(span))
                    .await
                    .map_err(|e| e.to_string());
                if result.is_ok() {
                    membership = meta.membership.clone();
                    last = meta.last_included;
                    metrics::gauge!(m::APPLIED_INDEX).set(last.index as f64);
                }
                let _ = events.send(Event::Installed { meta, data, result }).await;
            }
        }
    }
    if let Some(writing) = background {
        let _ = writing.await;
    }
}

/// A new snapshot's writer: a file in `dir`, or memory when the node keeps no files.
fn new_writer(dir: Option<&SnapshotDir>, meta: SnapshotMeta) -> Result<SnapshotWriter, String> {
    match dir {
        Some(dir) => dir
            .writer(meta)
            .map_err(|e| format!("creating a snapshot file: {e}")),
        None => Ok(SnapshotWriter::in_memory(meta)),
    }
}

/// Writes a snapshot from `view` on a thread of its own, at a low CPU priority (see
/// [`BACKGROUND_NICE`]); the file is durable when this returns. A panic while writing fails
/// this snapshot, not the node.
async fn write_from_view(
    view: Box<dyn SnapshotView>,
    dir: Option<SnapshotDir>,
    meta: SnapshotMeta,
) -> Result<Snapshot, String> {
    let (tx, rx) = oneshot::channel();
    let write = move || {
        lower_priority();
        let written = (|| {
            let mut writer = new_writer(dir.as_ref(), meta)?;
            view.write_to(&mut writer).map_err(|e| e.to_string())?;
            writer
                .finish()
                .map_err(|e| format!("completing the snapshot file: {e}"))
        })();
        let _ = tx.send(written);
    };
    std::thread::Builder::new()
        .name("dengine-snapshot".into())
        .spawn(write)
        .map_err(|e| format!("starting the snapshot writer thread: {e}"))?;
    rx.await
        .unwrap_or_else(|_| Err("the snapshot writer thread panicked".into()))
}

/// The nice value of the thread that writes a snapshot from a view: when the CPUs are busy it
/// gets a tenth of a normal thread's share, leaving the rest to the threads that serve,
/// replicate and apply writes; on an idle machine it runs at full speed. (On 2 cores with
/// three members writing their snapshots at once, the rise of the p99 of writes while they
/// ran was the same at nice 0 and 10, within the noise of the runs, docs/benchmarks.md,
/// 2026-12-05: that rise does not come from the CPU the writer takes; a state large enough
/// to keep a writer busy for seconds is where its share matters.)
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`] (Linux: the nice value
/// is per thread); elsewhere, or if refused, the thread keeps its priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let me = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(me), BACKGROUND_NICE) {
            tracing::debug!("the snapshot writer keeps its priority: {e}");
        }
    }
}

/// Has the state machine write a snapshot straight into a new snapshot file (or memory, when
/// the node keeps no files), so the snapshot is never held whole in memory by the runtime; the
/// file is durable when this returns.
async fn build_snapshot<M: StateMachine>(
    sm: &mut M,
    dir: Option<&SnapshotDir>,
    meta: SnapshotMeta,
) -> Result<Snapshot, String> {
    let mut writer = new_writer(dir, meta)?;
    sm.write_snapshot(&mut writer)
        .await
        .map_err(|e| e.to_string())?;
    writer
        .finish()
        .map_err(|e| format!("completing the snapshot file: {e}"))
}

/// Runs a long state machine call (building or installing a snapshot of a large state: seconds
/// of CPU) without holding up the other tasks of this thread. On a multi-thread runtime it runs
/// inside [`tokio::task::block_in_place`], which first hands the thread's queued tasks — the
/// protocol loop among them, whose heartbeats keep the leader's lease and quorum — to another
/// thread; a task woken last on this thread would otherwise wait for the whole call (seen as a
/// leader stepping down while three members built 400,000-key snapshots at once). On a
/// current-thread runtime it runs as is.
async fn long_call<F: std::future::Future>(call: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(call))
        }
        _ => call.await,
    }
}
