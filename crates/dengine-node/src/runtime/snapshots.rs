//! Snapshots on the event loop: building one through the apply task and recording it
//! (snapshot file, log store metadata, core), streaming it to followers that need compacted
//! entries, and installing one received from the leader (§7, thesis §5).

use dengine_core::store::{Snapshot, SnapshotData};
use dengine_core::{LogStore, Message, SnapshotMeta, StorageError, Transport};

use super::apply::ApplyCmd;
use super::waiters::Waiter;
use super::{Fatal, Runtime};
use crate::error::{AdminError, ProposeError};
use crate::metric_names as m;
use tracing::Instrument as _;

impl<S: LogStore, T: Transport> Runtime<S, T> {
    pub(super) async fn on_snapshot_built(
        &mut self,
        result: Result<Snapshot, String>,
    ) -> Result<(), Fatal> {
        self.building_snapshot = false;
        let snapshot = match result {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::warn!(error = %e, "building a snapshot failed");
                self.answer_snapshot_waiters(Err(AdminError::Snapshot(e)));
                return Ok(());
            }
        };
        // The apply task published its applied index before it built the snapshot, but that
        // report and this event arrive on different channels: catch the core up first, or a
        // snapshot of the newest applied entry is refused as "ahead of the applied index"
        // (seen when `trigger_snapshot` follows a write at once).
        if self.applied_rx.has_changed().unwrap_or(false) {
            self.on_applied()?;
        }
        let meta = snapshot.meta.clone();
        let known = self
            .raft
            .latest_snapshot()
            .map_or(0, |s| s.last_included.index);
        if meta.last_included.index > known {
            // The apply task wrote the snapshot file (synced) before it reported the build:
            // the log is compacted only behind a snapshot that survives a restart.
            self.flush_writes().await?;
            match self.store.save_snapshot_meta(&meta).await {
                Ok(()) => {}
                Err(StorageError::InvalidArgument(detail)) => {
                    // The log moved under the snapshot (a snapshot from the leader was
                    // installed meanwhile): skip this one.
                    tracing::warn!(%detail, "snapshot not recorded");
                    self.answer_snapshot_waiters(Err(AdminError::Snapshot(detail)));
                    return Ok(());
                }
                Err(e) => return Err(format!("recording snapshot metadata failed: {e}")),
            }
            if let Err(e) = self.raft.on_snapshot_created(meta.clone()) {
                tracing::warn!(error = %e, "the core refused the snapshot");
                self.answer_snapshot_waiters(Err(AdminError::Snapshot(e.to_string())));
                return Ok(());
            }
            tracing::info!(index = meta.last_included.index, "snapshot built");
        }
        // A snapshot in a file costs nothing to keep; one in memory is kept for a durable
        // state machine only while a follower needs it (it can build another).
        let in_memory = matches!(snapshot.data, SnapshotData::Bytes(_));
        let keep = self.raft.latest_snapshot().map(|s| s.last_included) == Some(meta.last_included)
            && (!self.durable_state_machine || !in_memory || self.snapshot_wanted());
        if keep {
            self.snapshot_cache = Some(snapshot.clone());
        }
        self.snapshot_for_peer = false;
        self.answer_snapshot_waiters(Ok(snapshot));
        Ok(())
    }

    pub(super) async fn on_snapshot_loaded(
        &mut self,
        meta: SnapshotMeta,
        data: SnapshotData,
        result: Result<(), String>,
    ) -> Result<(), Fatal> {
        if let Err(e) = result {
            tracing::warn!(error = %e, index = meta.last_included.index, "installing a snapshot failed");
            self.raft.abort_snapshot_install();
            return Ok(());
        }
        let mut data = data;
        if let Some(dir) = &self.snapshot_dir {
            let snapshot = Snapshot {
                meta: meta.clone(),
                data,
            };
            // The log is about to be discarded up to the snapshot: without the file a
            // restart could not rebuild the state machine. From here on the data is read
            // from the new file (what the transport received it into can go).
            data = dir.save(&snapshot).await?.data;
        }
        self.flush_writes().await?;
        if let Err(e) = self.store.reset_to_snapshot(&meta).await {
            return Err(format!(
                "resetting the log store to snapshot {} failed: {e}",
                meta.last_included
            ));
        }
        let last = meta.last_included;
        self.raft.on_snapshot_installed(last);
        metrics::counter!(m::SNAPSHOTS_INSTALLED_TOTAL).increment(1);
        tracing::info!(index = last.index, term = last.term, "snapshot installed");
        self.snapshot_due_at = None;
        self.since_snapshot_bytes = 0;
        // Entries folded into the snapshot were never handed out here: their waiters cannot
        // learn their fate.
        let rest = self.waiters.split_off(last.index + 1);
        for (_, waiter) in std::mem::replace(&mut self.waiters, rest) {
            match waiter {
                Waiter::Proposal { tx, .. } => {
                    let _ = tx.send(Err(ProposeError::Interrupted(
                        "its entry was folded into a snapshot received from the leader",
                    )));
                }
                Waiter::Config { tx, .. } => {
                    let _ = tx.send(Err(AdminError::Timeout));
                }
            }
        }
        if !self.durable_state_machine || !matches!(data, SnapshotData::Bytes(_)) {
            self.snapshot_cache = Some(Snapshot { meta, data });
        }
        Ok(())
    }

    /// Whether a follower waits for the newest snapshot: one is being sent, or a send failed
    /// (for want of data, or of the peer) and will be retried.
    fn snapshot_wanted(&self) -> bool {
        self.snapshot_for_peer || !self.snapshot_peers.is_empty()
    }

    /// Streams the snapshot an `InstallSnapshot` message announces to its peer, in a task of
    /// its own (see [`on_snapshot_sent`](Self::on_snapshot_sent)); `meta` is the message's.
    pub(super) fn send_snapshot(&mut self, msg: Message, meta: &SnapshotMeta) {
        let peer = msg.to;
        let data = self
            .snapshot_cache
            .as_ref()
            .filter(|s| s.meta.last_included == meta.last_included)
            .map(|s| s.data.clone());
        let Some(data) = data else {
            // The core knows a snapshot whose data this process does not hold (it was recorded
            // before a restart): build a fresh one and let the core retry.
            self.failed_snapshot_sends.push(peer);
            self.snapshot_for_peer = true;
            let covered = meta.last_included.index;
            if !self.building_snapshot && self.raft.applied_index() >= covered {
                self.building_snapshot = true;
                if let Some(apply) = &self.apply_tx
                    && apply.try_send(ApplyCmd::BuildSnapshot).is_err()
                {
                    self.building_snapshot = false;
                }
            }
            return;
        };
        tracing::info!(peer, index = meta.last_included.index, "sending a snapshot");
        let transport = self.transport.clone();
        let span = tracing::info_span!("snapshot_send", peer, index = meta.last_included.index);
        let task = self.snapshot_senders.spawn(
            async move {
                let outcome = transport
                    .send_snapshot(msg, data)
                    .await
                    .map_err(|e| e.to_string());
                (peer, outcome)
            }
            .instrument(span),
        );
        self.snapshot_peers.insert(task.id(), peer);
    }

    /// A snapshot stream ended: tell the core (which resumes appends, or tries again).
    pub(super) fn on_snapshot_sent(&mut self, sent: super::SnapshotSent) {
        let (peer, outcome) = match sent {
            Ok((id, outcome)) => {
                self.snapshot_peers.remove(&id);
                outcome
            }
            Err(e) => match self.snapshot_peers.remove(&e.id()) {
                // The task panicked: the snapshot did not arrive.
                Some(peer) if e.is_panic() => (peer, Err("the sending task panicked".into())),
                // Aborted at shutdown.
                _ => return,
            },
        };
        match outcome {
            Ok(()) => {
                metrics::counter!(m::SNAPSHOTS_SENT_TOTAL).increment(1);
                self.raft.report_snapshot(peer, true);
                // A durable state machine builds another when a follower needs one.
                let in_memory = self
                    .snapshot_cache
                    .as_ref()
                    .is_some_and(|s| matches!(s.data, SnapshotData::Bytes(_)));
                if self.durable_state_machine && in_memory && !self.snapshot_wanted() {
                    self.snapshot_cache = None;
                }
            }
            Err(error) => {
                // Reported on the next tick: the core asks again at once, and a stream that
                // fails at once (a refused connection) would otherwise be retried in a hot
                // loop, a new task and a copy of the snapshot's handle each time, without the
                // clock moving. A peer that stays down fails once a tick: the warning is
                // rate-limited.
                let now = tokio::time::Instant::now().into_std();
                if let Some(suppressed) = self.snapshot_send_log.allow(now) {
                    tracing::warn!(
                        peer,
                        %error,
                        suppressed,
                        "sending a snapshot failed; it will be retried"
                    );
                }
                self.failed_snapshot_sends.push(peer);
            }
        }
    }

    pub(super) async fn build_snapshot(&mut self) -> Result<(), Fatal> {
        self.building_snapshot = true;
        self.snapshot_due_at = None;
        self.since_snapshot_bytes = 0;
        self.send_apply(ApplyCmd::BuildSnapshot).await
    }

    pub(super) async fn install(&mut self, meta: SnapshotMeta) -> Result<(), Fatal> {
        let data = match self.incoming_snapshot.take() {
            Some((have, data)) if have.last_included == meta.last_included => data,
            other => {
                self.incoming_snapshot = other;
                tracing::warn!(
                    index = meta.last_included.index,
                    "no data for the snapshot to install"
                );
                self.raft.abort_snapshot_install();
                return Ok(());
            }
        };
        self.send_apply(ApplyCmd::Install { meta, data }).await
    }

    pub(super) fn answer_snapshot_waiters(&mut self, result: Result<Snapshot, AdminError>) {
        for tx in std::mem::take(&mut self.snapshot_waiters) {
            let _ = tx.send(result.clone());
        }
    }
}
