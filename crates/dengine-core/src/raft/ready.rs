//! Assembling the output bundle and taking I/O completions back (see [`crate::Ready`] for the
//! contract a runtime follows).

use super::Raft;
use crate::ready::Ready;
use crate::store::LogReader;
use crate::store::{PersistRequest, Persisted};
use crate::types::{LogIndex, Role};

impl<L: LogReader> Raft<L> {
    /// Whether [`ready`](Raft::ready) has anything to hand out.
    pub fn has_ready(&self) -> bool {
        !self.messages.is_empty()
            || self.has_unsynced_state()
            || self.hard_state() != self.written_hard_state
            || (self.log.has_next_committed() && self.installing.is_none())
            || !self.read_states.is_empty()
            || !self.failed_reads.is_empty()
            || !self.storage_errors.is_empty()
            || !self.regressions.is_empty()
            || self.soft_state() != self.reported_soft_state
            || (self.role == Role::Leader && self.broadcast_pending)
            || self.reads_round_due()
            || (self.installing.is_some() && !self.install_reported)
            || self.compact_to.is_some()
    }

    /// Takes everything the runtime must now do. Entries proposed since the last call are
    /// sent to followers here, in as few messages as the size limits allow.
    pub fn ready(&mut self) -> Ready {
        self.flush_read_round();
        self.flush_broadcast();

        let mut ready = Ready::default();
        let soft = self.soft_state();
        if soft != self.reported_soft_state {
            self.reported_soft_state = soft;
            ready.soft_state = Some(soft);
        }

        let hard = self.hard_state();
        let sync_needed = self.has_unsynced_state();
        if sync_needed || hard != self.written_hard_state {
            let hard_state = (hard != self.written_hard_state).then_some(hard);
            let entries = self.log.take_unwritten();
            let write_id = self.next_write_id;
            self.next_write_id += 1;
            if sync_needed {
                self.last_sync_write = write_id;
            }
            if self.has_unsynced_term() {
                self.last_term_write = write_id;
            }
            if let Some(last) = entries.last() {
                self.last_written_entry = Some(last.id());
            }
            self.written_hard_state = hard;
            ready.persist = Some(PersistRequest {
                write_id,
                hard_state,
                entries,
                must_sync: sync_needed,
                covers_entry: self.last_written_entry,
            });
        }

        ready.messages = std::mem::take(&mut self.messages);
        // While a snapshot from the leader is being installed it supersedes the log: entries
        // are handed out again only after it.
        if self.installing.is_none() {
            match self.log.next_committed(self.cfg.max_apply_batch_bytes) {
                Ok(entries) => ready.committed_entries = entries,
                Err(e) => self.storage_errors.push(e),
            }
        }
        if let Some(meta) = &self.installing
            && !self.install_reported
        {
            self.install_reported = true;
            ready.snapshot_to_install = Some(meta.clone());
        }
        ready.compact_log_to = self.compact_to.take();
        ready.read_states = std::mem::take(&mut self.read_states);
        ready.failed_reads = std::mem::take(&mut self.failed_reads);
        ready.storage_errors = std::mem::take(&mut self.storage_errors);
        ready.regressed_peers = std::mem::take(&mut self.regressions);
        ready
    }

    /// Reports that a [`PersistRequest`] (and every earlier one) is durable, and that the log
    /// reader now shows its entries. Releases the responses that waited for it; on a leader,
    /// counts the entries toward commitment.
    pub fn on_persisted(&mut self, done: Persisted) {
        if done.write_id <= self.acked_write || done.write_id >= self.next_write_id {
            // Already acknowledged, or never issued: nothing to do.
            return;
        }
        self.acked_write = done.write_id;
        if let Some(last) = done.last_entry
            && self.log.on_persisted(last)
            && self.role == Role::Leader
        {
            self.maybe_commit();
        }
        while self
            .gated
            .front()
            .is_some_and(|(gate, _)| *gate <= self.acked_write)
        {
            if let Some((_, msg)) = self.gated.pop_front() {
                // Its write is durable now: release it without gating it again.
                if msg.to == self.id() {
                    self.step_inner(msg);
                } else {
                    self.messages.push(msg);
                }
            }
        }
    }

    /// Reports that the state machine has applied every entry up to `index` (from the
    /// committed entries handed out so far). Releases reads waiting for that index.
    pub fn on_applied(&mut self, index: LogIndex) {
        let index = index.min(self.log.applying);
        if index > self.log.applied {
            self.log.applied = index;
            self.release_reads();
        }
    }

    fn reads_round_due(&self) -> bool {
        self.role == Role::Leader && self.reads_round_needed()
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{MemoryStore, StorageError};
    use crate::types::Membership;
    use crate::{Config, InitialState, PeerRegression, Raft};

    fn quiet_follower() -> Raft<MemoryStore> {
        let initial = InitialState {
            membership: Membership::new([1, 2, 3]),
            ..Default::default()
        };
        let mut node = Raft::new(Config::new(1), MemoryStore::new(), initial).unwrap();
        while node.has_ready() {
            let _ = node.ready();
        }
        node
    }

    /// The `has_ready` contract: true whenever `ready` would hand out something — here each
    /// kind of report alone, with nothing else pending.
    #[test]
    fn a_lone_storage_error_or_regression_is_ready() {
        let mut node = quiet_follower();
        node.storage_errors
            .push(StorageError::Inconsistent("a read failed".into()));
        assert!(node.has_ready());
        assert_eq!(node.ready().storage_errors.len(), 1);
        assert!(!node.has_ready());

        node.regressions.push(PeerRegression {
            peer: 2,
            acknowledged: 5,
            log_end: 0,
        });
        assert!(node.has_ready());
        assert_eq!(node.ready().regressed_peers.len(), 1);
        assert!(!node.has_ready());
    }

    /// Figure 2 ("respond to RPCs only after updating stable storage"): an acknowledgement
    /// of a write that was never handed out (a runtime bug) releases nothing and counts
    /// nothing as durable.
    #[test]
    fn an_acknowledgement_of_a_write_never_issued_is_ignored() {
        use crate::message::{AppendRequest, Message, MessageBody};
        use crate::store::Persisted;
        use crate::types::{Entry, EntryId, EntryPayload};

        let mut node = quiet_follower();
        node.step(Message {
            from: 2,
            to: 1,
            term: 1,
            body: MessageBody::Append(AppendRequest {
                prev: EntryId::ZERO,
                entries: vec![Entry::new(1, 1, EntryPayload::Blank)],
                commit: 0,
            }),
        })
        .unwrap();
        let write = node.ready().persist.unwrap();
        node.on_persisted(Persisted {
            write_id: write.write_id + 1,
            last_entry: Some(EntryId::new(1, 1)),
        });
        assert_eq!(node.persisted_index(), 0);
        assert!(node.ready().messages.is_empty(), "the ack still waits");
        node.on_persisted(write.done());
        assert_eq!(node.persisted_index(), 1);
        assert_eq!(node.ready().messages.len(), 1, "now it goes");
    }
}
