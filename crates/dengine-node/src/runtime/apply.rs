//! The apply task: owns the state machine, applies committed entries in order and in
//! batches, answers the waiting proposers, serves queries after the entries before them,
//! and builds and installs snapshots — all off the event loop.

use bytes::Bytes;
use dengine_core::{Entry, EntryPayload, LogIndex, Membership, SnapshotMeta, StateMachine};
use tokio::sync::{mpsc, oneshot, watch};

use super::request::Event;
use crate::error::{ProposeError, ReadError};
use crate::metric_names as m;

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
        query: Bytes,
        tx: oneshot::Sender<Result<Bytes, ReadError>>,
    },
    /// Serialize the state machine.
    BuildSnapshot,
    /// Replace the state with a snapshot from the leader.
    Install { meta: SnapshotMeta, data: Bytes },
}

/// Runs until the loop drops its sender (or the state machine fails).
///
/// `membership` is the configuration as of the state machine's applied index. The task keeps
/// it up to date from applied configuration entries and records it in every snapshot it
/// builds: the configuration of a bootstrapped cluster is in no log entry, so a state machine
/// cannot know it by itself.
pub(crate) async fn run<M: StateMachine>(
    mut sm: M,
    mut rx: mpsc::Receiver<ApplyCmd>,
    applied: watch::Sender<LogIndex>,
    events: mpsc::Sender<Event>,
    mut membership: Membership,
) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            ApplyCmd::Apply {
                entries,
                responders,
            } => {
                let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                    continue;
                };
                let (first, last) = (first.index, last.index);
                metrics::histogram!(m::APPLY_BATCH_ENTRIES).record(entries.len() as f64);
                match sm.apply(&entries).await {
                    Ok(responses) => {
                        for entry in &entries {
                            if let EntryPayload::Membership(m) = &entry.payload {
                                membership = m.clone();
                            }
                        }
                        for r in responders {
                            let slot = usize::try_from(r.index.saturating_sub(first)).ok();
                            let response = slot.and_then(|i| responses.get(i)).cloned();
                            let _span = r.span.enter();
                            tracing::debug!(index = r.index, "applied");
                            // A missing response is a state machine that broke its contract
                            // (one response per entry); answer empty rather than hang.
                            let _ = r.tx.send(Ok(response.unwrap_or_default()));
                        }
                        metrics::gauge!(m::APPLIED_INDEX).set(last as f64);
                        applied.send_replace(last);
                    }
                    Err(e) => {
                        let reason = format!(
                            "the state machine failed to apply entries {first}..={last}: {e}"
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
                let result = sm
                    .query(query)
                    .await
                    .map_err(|e| ReadError::StateMachine(e.to_string()));
                let _ = tx.send(result);
            }
            ApplyCmd::BuildSnapshot => {
                let result = sm.snapshot().await.map_err(|e| e.to_string());
                let result = result.map(|mut snapshot| {
                    snapshot.meta.membership = membership.clone();
                    snapshot
                });
                let _ = events.send(Event::SnapshotBuilt(result)).await;
            }
            ApplyCmd::Install { meta, data } => {
                let result = sm
                    .install_snapshot(&meta, data.clone())
                    .await
                    .map_err(|e| e.to_string());
                if result.is_ok() {
                    membership = meta.membership.clone();
                    metrics::gauge!(m::APPLIED_INDEX).set(meta.last_included.index as f64);
                }
                let _ = events.send(Event::Installed { meta, data, result }).await;
            }
        }
    }
}
