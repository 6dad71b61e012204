//! Graceful shutdown: hand leadership over (thesis §3.10), fail what is pending, sync the
//! log store, stop the apply task.

use std::time::Duration;

use dengine_core::{LogStore, Role, Transport};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::request::Request;
use super::waiters::Waiter;
use super::{Fatal, Runtime, Stopping};
use crate::error::{AdminError, ProposeError, ReadError};

impl<S: LogStore, T: Transport> Runtime<S, T> {
    pub(super) fn begin_shutdown(&mut self, tx: oneshot::Sender<()>) {
        if let Some(stopping) = self.stopping.as_mut() {
            stopping.done.push(tx);
            return;
        }
        let timeout = Duration::from_millis(self.settings.shutdown.transfer_timeout_ms);
        self.stopping = Some(Stopping {
            deadline: Instant::now() + timeout,
            done: vec![tx],
        });
        if self.raft.role() != Role::Leader {
            return;
        }
        // Hand leadership to the most up-to-date voter so the cluster does not wait an
        // election timeout for a new leader (thesis §3.10).
        let me = self.id;
        let target = self
            .raft
            .membership()
            .voters
            .iter()
            .copied()
            .filter(|&v| v != me)
            .filter_map(|v| self.raft.peer_progress(v).map(|p| (p.match_index, v)))
            .max();
        if let Some((_, to)) = target {
            match self.raft.transfer_leader(to) {
                Ok(()) => tracing::info!(to, "shutting down: handing leadership over"),
                Err(e) => tracing::warn!(to, error = %e, "shutting down without leader transfer"),
            }
        }
    }

    /// Whether a graceful shutdown may finish now: this node does not lead (any more), the
    /// handover was not possible, or its time is up.
    pub(super) fn stop_due(&self) -> bool {
        let Some(stopping) = &self.stopping else {
            return false;
        };
        self.raft.role() != Role::Leader
            || self.raft.transfer_target().is_none()
            || Instant::now() >= stopping.deadline
    }

    pub(super) async fn finish(mut self, fatal: Option<Fatal>) {
        if let Some(reason) = &fatal {
            tracing::error!(node = self.id, %reason, "node stopped on a fatal error");
            *self.fatal.lock() = Some(reason.clone());
        }
        let propose_error = || match &fatal {
            Some(reason) => ProposeError::Stopped {
                reason: reason.clone(),
            },
            None => ProposeError::ShuttingDown,
        };
        let admin_error = || match &fatal {
            Some(reason) => AdminError::Stopped {
                reason: reason.clone(),
            },
            None => AdminError::ShuttingDown,
        };
        // Refuse what is still queued, then fail everything pending.
        self.req_rx.close();
        while let Ok(request) = self.req_rx.try_recv() {
            match request {
                Request::Propose { tx, .. } => {
                    let _ = tx.send(Err(propose_error()));
                }
                Request::Shutdown { tx } => self.begin_shutdown(tx),
                _ => {}
            }
        }
        for (_, waiter) in std::mem::take(&mut self.waiters) {
            match waiter {
                Waiter::Proposal { tx, .. } => {
                    let _ = tx.send(Err(propose_error()));
                }
                Waiter::Config { tx, .. } => {
                    let _ = tx.send(Err(admin_error()));
                }
            }
        }
        for (_, read) in std::mem::take(&mut self.reads) {
            let _ = read.tx.send(Err(ReadError::ShuttingDown));
        }
        for w in std::mem::take(&mut self.config_waiters) {
            let _ = w.tx.send(Err(admin_error()));
        }
        for c in std::mem::take(&mut self.pending_changes) {
            let _ = c.tx.send(Err(admin_error()));
        }
        for t in std::mem::take(&mut self.transfers) {
            let _ = t.tx.send(Err(admin_error()));
        }
        self.answer_snapshot_waiters(Err(admin_error()));
        // Writes still in flight finish (their callers were told `Stopped`, so their outcome
        // is unknown to them either way); after a fatal error nothing more is written.
        let flushed = fatal.is_none() && self.flush_writes().await.is_ok();
        if flushed && let Err(e) = self.store.sync().await {
            tracing::error!(error = %e, "final sync of the log store failed");
        }
        // Let the apply task finish what it was given, then stop it.
        self.apply_tx = None;
        if let Some(task) = self.apply_task.0.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.snapshot_senders.abort_all();
        if let Some(stopping) = self.stopping.take() {
            for tx in stopping.done {
                let _ = tx.send(());
            }
        }
        tracing::info!(node = self.id, "node stopped");
    }
}
