//! Snapshots and log compaction (Raft paper §7, thesis §5): the runtime tells the core when
//! the state machine has a snapshot; the core lets the log before it be purged (keeping some
//! trailing entries), sends the snapshot to followers that need purged entries, and installs
//! snapshots received from the leader.

use super::Raft;
use super::errors::SnapshotError;
use crate::message::{AppendResponse, MessageBody};
use crate::progress::ReplicationState;
use crate::store::{LogReader, StorageError};
use crate::types::{EntryId, NodeId, Role, SnapshotMeta};

impl<L: LogReader> Raft<L> {
    /// The state machine has taken a snapshot covering everything up to
    /// `meta.last_included` (at most the applied index), with the configuration in effect
    /// there. The core will send it to followers that need compacted entries, and a later
    /// [`Ready::compact_log_to`](crate::Ready::compact_log_to) says how much of the log may
    /// now be purged (the snapshot point minus `snapshot_trailing_entries`).
    pub fn on_snapshot_created(&mut self, meta: SnapshotMeta) -> Result<(), SnapshotError> {
        let id = meta.last_included;
        if id.index > self.log.applied {
            return Err(SnapshotError::AheadOfApplied {
                index: id.index,
                applied: self.log.applied,
            });
        }
        if let Ok(actual) = self.log.term(id.index)
            && actual != id.term
        {
            return Err(SnapshotError::TermMismatch {
                claimed: id,
                actual,
            });
        }
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.last_included.index >= id.index)
        {
            return Ok(());
        }
        let purge_to = id.index.saturating_sub(self.cfg.snapshot_trailing_entries);
        if purge_to >= self.log.first_index() {
            self.compact_to = Some(self.compact_to.map_or(purge_to, |c| c.max(purge_to)));
        }
        self.snapshot = Some(meta);
        Ok(())
    }

    /// The newest snapshot the core knows of (created here or installed from a leader).
    pub fn latest_snapshot(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    /// The runtime's transport finished sending the snapshot to `peer` (`delivered`) or gave
    /// up (`!delivered`). Either way the leader goes back to probing the peer: after a
    /// delivered snapshot it continues right after it (the peer's answer confirms), after a
    /// failed one it sends the snapshot again if it is still needed.
    pub fn report_snapshot(&mut self, peer: NodeId, delivered: bool) {
        if let Some(p) = self.progress.get_mut(&peer)
            && let ReplicationState::Snapshot { index } = p.state
        {
            p.become_probe();
            if delivered {
                p.next_index = p.next_index.max(index + 1);
            }
            self.broadcast_pending = true;
        }
    }

    /// The runtime installed the snapshot handed out in
    /// [`Ready::snapshot_to_install`](crate::Ready::snapshot_to_install): the state machine
    /// holds its data, the log store was reset to start right after `last`, and the snapshot
    /// metadata is saved durably.
    pub fn on_snapshot_installed(&mut self, last: EntryId) {
        let Some(meta) = self.installing.take_if(|m| m.last_included == last) else {
            return;
        };
        self.log.restore(last);
        self.configs = vec![(last.index, meta.membership.clone())];
        self.set_membership(meta.membership.clone());
        self.snapshot = Some(meta);
        if let Some(leader) = self.leader {
            self.send(
                leader,
                MessageBody::AppendResponse(AppendResponse::Accepted { last }),
            );
        }
        self.release_reads();
    }

    /// The runtime could not install the snapshot handed out to it; the leader will send it
    /// again.
    pub fn abort_snapshot_install(&mut self) {
        self.installing = None;
    }

    /// Starts sending our snapshot to `peer`, which needs compacted entries. Returns whether
    /// a snapshot went out.
    pub(super) fn send_snapshot(&mut self, peer: NodeId) -> bool {
        let covered = self.log.first_index().saturating_sub(1);
        let Some(meta) = self
            .snapshot
            .clone()
            .filter(|s| s.last_included.index >= covered)
        else {
            self.storage_errors.push(StorageError::Inconsistent(format!(
                "node {peer} needs entries compacted before index {} but no snapshot covers \
                 them",
                covered + 1
            )));
            return false;
        };
        let Some(p) = self.progress.get_mut(&peer) else {
            return false;
        };
        p.become_snapshot(meta.last_included.index);
        self.send(peer, MessageBody::InstallSnapshot(meta));
        true
    }

    /// InstallSnapshot receiver (§7).
    pub(super) fn handle_install_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        if self.role == Role::Leader {
            return; // Election Safety: no other leader in our term.
        }
        self.accept_leader(from);
        let last = meta.last_included;
        // §7: a snapshot that describes a prefix of our log (we hold its last entry) only
        // moves the commit index; the entries after it are kept. A snapshot older than our
        // commit index is stale and changes nothing.
        if self.log.matches(last) || last.index <= self.log.committed {
            if self.log.matches(last) {
                self.log.commit_to(last.index);
            }
            self.send(
                from,
                MessageBody::AppendResponse(AppendResponse::Accepted { last }),
            );
            return;
        }
        if self.installing.is_none() {
            // Everything else is replaced: the runtime installs the data and resets the log.
            self.installing = Some(meta);
            self.install_reported = false;
        }
    }

    /// Whether a snapshot handed to the runtime is being installed (appends wait).
    pub(super) fn is_installing_snapshot(&self) -> bool {
        self.installing.is_some()
    }
}
