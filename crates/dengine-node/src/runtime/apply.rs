//! The apply task: owns the state machine, applies committed entries in order and in
//! batches, answers the waiting proposers, serves queries after the entries before them,
//! and builds and installs snapshots — all off the event loop.

use bytes::Bytes;
use tokio::time::Instant;

use dengine_core::store::{Command, Snapshot, SnapshotData};
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
                        return;
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
                let build = build_snapshot(&mut sm, snapshot_dir.as_ref(), meta);
                let result = long_call(build.instrument(span)).await;
                let _ = events.send(Event::SnapshotBuilt(result)).await;
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
}

/// Has the state machine write a snapshot straight into a new snapshot file (or memory, when
/// the node keeps no files), so the snapshot is never held whole in memory by the runtime; the
/// file is durable when this returns.
async fn build_snapshot<M: StateMachine>(
    sm: &mut M,
    dir: Option<&SnapshotDir>,
    meta: SnapshotMeta,
) -> Result<Snapshot, String> {
    let mut writer = match dir {
        Some(dir) => dir
            .writer(meta)
            .map_err(|e| format!("creating a snapshot file: {e}"))?,
        None => SnapshotWriter::in_memory(meta),
    };
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
