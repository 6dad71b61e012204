//! Log replication and commitment: proposals, AppendEntries and heartbeats on both sides,
//! flow control, conflict repair, and the commit rule (Raft paper §5.3, §5.4.2).

use bytes::Bytes;

use super::{Raft, bug};
use crate::message::{
    AppendRequest, AppendResponse, ConflictHint, Heartbeat, HeartbeatResponse, MessageBody,
};
use crate::progress::ReplicationState;
use crate::ready::ProposeError;
use crate::store::{LogReader, StorageError};
use crate::types::{Entry, EntryId, EntryPayload, LogIndex, NodeId, Role};

impl<L: LogReader> Raft<L> {
    /// Appends a client command to the leader's log and returns the id it was given. The
    /// entry is sent to followers when the next [`Ready`](crate::Ready) is taken, together with
    /// every other proposal made since, so a burst of proposals costs one write and one
    /// message per follower.
    pub fn propose(&mut self, data: Bytes) -> Result<EntryId, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
                leader_address: self
                    .leader
                    .and_then(|l| self.membership.address(l))
                    .map(str::to_owned),
            });
        }
        if let Some(t) = self.transfer {
            return Err(ProposeError::TransferInProgress { to: t.target });
        }
        let size = data.len() as u64;
        if size > self.cfg.max_proposal_bytes {
            return Err(ProposeError::TooLarge {
                size,
                max: self.cfg.max_proposal_bytes,
            });
        }
        // Bounds memory while followers cannot keep up or are down: entries stay in memory
        // (and in flight) until committed. Counted with the per-entry overhead, so empty
        // proposals are bounded too.
        let size = size + crate::types::ENTRY_OVERHEAD_BYTES;
        if self.uncommitted_bytes + size > self.cfg.max_uncommitted_bytes {
            return Err(ProposeError::UncommittedLimit {
                uncommitted: self.uncommitted_bytes,
                max: self.cfg.max_uncommitted_bytes,
            });
        }
        let id = EntryId::new(self.term, self.log.last_index() + 1);
        self.log
            .append([Entry::new(id.term, id.index, EntryPayload::Normal(data))]);
        self.uncommitted.push_back((id.index, size));
        self.uncommitted_bytes += size;
        self.broadcast_pending = true;
        // A single-voter cluster commits as soon as its own write is durable.
        Ok(id)
    }

    // ----- leader: sending ---------------------------------------------------------------------

    /// Sends whatever each follower is missing (entries or just the commit index), as far as
    /// its flow control allows. Called once per turn, when the `Ready` is assembled.
    pub(super) fn flush_broadcast(&mut self) {
        if !self.broadcast_pending || self.role != Role::Leader {
            return;
        }
        self.broadcast_pending = false;
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_appends(peer, true);
        }
    }

    /// Sends appends to `peer` until it is paused or up to date. With `commit_only_ok`, an
    /// empty append is sent to carry a commit index the peer has not been told.
    pub(super) fn send_appends(&mut self, peer: NodeId, commit_only_ok: bool) {
        let last = self.log.last_index();
        loop {
            let Some(p) = self.progress.get(&peer) else {
                return;
            };
            if p.is_paused() {
                return;
            }
            let has_entries = p.next_index <= last;
            let needs_commit = p.sent_commit < self.log.committed
                && p.state == ReplicationState::Replicate
                && commit_only_ok;
            // A peer in probe state (e.g. just added, or after a rejection) gets an append at
            // next_index - 1 even with no entries to carry, to find where its log stands.
            let needs_probe = p.state == ReplicationState::Probe;
            if !has_entries && !needs_commit && !needs_probe {
                return;
            }
            if !self.send_one_append(peer) || !has_entries {
                return;
            }
        }
    }

    /// Builds one AppendEntries for `peer` from its `next_index`. Returns false when nothing
    /// could be sent.
    fn send_one_append(&mut self, peer: NodeId) -> bool {
        let Some(p) = self.progress.get(&peer) else {
            return false;
        };
        let next = p.next_index;
        let prev_index = next - 1;
        let prev_term = match self.log.term(prev_index) {
            Ok(t) => t,
            // The follower needs entries we have compacted: send the snapshot (§7).
            Err(StorageError::Compacted { .. }) => return self.send_snapshot(peer),
            Err(e) => {
                self.storage_errors.push(e);
                return false;
            }
        };
        let high = self.log.last_index() + 1;
        let entries = match self.log.entries(next, high, self.cfg.max_message_bytes) {
            Ok(entries) => entries,
            Err(StorageError::Compacted { .. }) => return self.send_snapshot(peer),
            Err(e) => {
                self.storage_errors.push(e);
                return false;
            }
        };
        let commit = self.log.committed;
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let last_sent = prev_index + entries.len() as u64;
        if let Some(p) = self.progress.get_mut(&peer) {
            if !entries.is_empty() || p.state == ReplicationState::Probe {
                p.sent_entries(last_sent, bytes);
            }
            p.sent_commit = p.sent_commit.max(commit);
        }
        self.send(
            peer,
            MessageBody::Append(AppendRequest {
                prev: EntryId::new(prev_term, prev_index),
                entries,
                commit,
            }),
        );
        true
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        let round = self
            .reads
            .next_round(self.now, self.cfg.election_timeout_ticks);
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            let Some(p) = self.progress.get(&peer) else {
                continue;
            };
            // Never tell a follower to commit past what it is known to hold: its log beyond
            // match_index may still differ from ours.
            let commit = p.match_index.min(self.log.committed);
            self.send(peer, MessageBody::Heartbeat(Heartbeat { commit, round }));
        }
    }

    // ----- leader: receiving -------------------------------------------------------------------

    pub(super) fn handle_append_response(&mut self, from: NodeId, resp: AppendResponse) {
        if self.role != Role::Leader {
            return;
        }
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        p.recent_active = true;
        match resp {
            AppendResponse::Accepted { last } => {
                // Acknowledged by (term, index): an ack for an entry we do not hold (from a
                // confused or stale peer) must not count toward commitment. Entries we have
                // compacted are committed, and every follower's committed prefix matches.
                if !self.log.matches(last) && last.index >= self.log.first_index() {
                    return;
                }
                let Some(p) = self.progress.get_mut(&from) else {
                    return;
                };
                let state = p.state;
                let updated = p.maybe_update(last.index);
                p.inflights.free_to(last.index);
                match state {
                    // The follower matched us at `last`: stop probing and stream from there.
                    ReplicationState::Probe if last.index >= p.match_index => {
                        p.become_replicate();
                    }
                    // The snapshot is installed: stream the entries after it.
                    ReplicationState::Snapshot { index } if p.match_index >= index => {
                        p.become_replicate();
                    }
                    _ => {}
                }
                if updated {
                    self.maybe_commit();
                }
                self.send_appends(from, false);
                self.maybe_send_timeout_now();
            }
            AppendResponse::Rejected {
                rejected_index,
                hint,
            } => {
                let next = self.next_after_rejection(rejected_index, hint);
                let Some(p) = self.progress.get_mut(&from) else {
                    return;
                };
                if p.maybe_decrease_to(rejected_index, next) {
                    self.send_appends(from, false);
                }
            }
        }
    }

    /// Where to continue after a rejection, using the follower's hint to skip a whole
    /// conflicting term per round trip (§5.3, end).
    fn next_after_rejection(&self, rejected: LogIndex, hint: ConflictHint) -> LogIndex {
        match hint {
            ConflictHint::LogTooShort { last_index } => last_index.saturating_add(1),
            ConflictHint::TermConflict { term, first_index } => {
                // If we hold entries of the follower's conflicting term, the logs agree up to
                // our last entry of that term (Log Matching); otherwise every follower entry
                // of that term conflicts.
                let ours = self.log.last_index_with_term_at_most(term, rejected);
                if self.log.term(ours).is_ok_and(|t| t == term) {
                    ours + 1
                } else {
                    first_index.min(ours + 1)
                }
            }
        }
    }

    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, resp: HeartbeatResponse) {
        if self.role != Role::Leader {
            return;
        }
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        p.recent_active = true;
        // A live answer unblocks a probe whose append may have been lost.
        p.probe_sent = false;
        p.acked_round = p.acked_round.max(resp.round);
        if let Some(log_end) = resp.log_end {
            // The follower lost entries it acknowledged. Match indexes otherwise never move
            // back (§5.3), but this one was wrong: keep counting it and a commit could rest
            // on a copy that no longer exists, while the leader never resends the entries.
            let current_round = self.reads.last_round();
            if let Some(acknowledged) = p.regress(log_end, resp.round, current_round) {
                self.regressions.push(crate::ready::PeerRegression {
                    peer: from,
                    acknowledged,
                    log_end,
                });
            }
        }
        if p.match_index < self.log.last_index() {
            // The follower is alive but behind: appends or their acks may have been lost, or
            // it restarted and lost unsynced entries. Free one window slot and send an
            // append from next_index even if it is empty: if the follower lacks its prev it
            // rejects, and the rejection moves us back to probing (§5.3).
            if p.state == ReplicationState::Replicate && p.inflights.is_full() {
                p.inflights.free_first();
            }
            if !p.is_paused() {
                self.send_one_append(from);
                self.send_appends(from, false);
            }
        }
        self.advance_reads();
    }

    /// The commit rule (§5.3, §5.4.2, Figure 8): an index is committed once a majority of
    /// voters hold it durably *and* its entry is of the leader's current term. Entries of
    /// earlier terms are committed only indirectly, by a later entry of this term.
    pub(super) fn maybe_commit(&mut self) {
        let me = self.id();
        // The leader counts itself only for entries it has persisted (thesis §10.2.1): it
        // replicates in parallel with its own fsync but must not acknowledge what a crash
        // could still erase.
        let own = if bug!(self, LeaderCountsUnpersisted) {
            self.log.last_index()
        } else {
            self.log.persisted
        };
        let index = self.quorum_value(|v| {
            if v == me {
                own
            } else {
                self.progress.get(&v).map_or(0, |p| p.match_index)
            }
        });
        let current_term = self.log.term(index).is_ok_and(|t| t == self.term);
        if index <= self.log.committed || (!current_term && !bug!(self, Figure8Commit)) {
            return;
        }
        self.log.commit_to(index);
        while self.uncommitted.front().is_some_and(|&(i, _)| i <= index) {
            if let Some((_, bytes)) = self.uncommitted.pop_front() {
                self.uncommitted_bytes -= bytes;
            }
        }
        self.broadcast_pending = true;
        self.advance_reads();
        self.after_commit_membership();
    }

    // ----- follower: receiving -----------------------------------------------------------------

    /// AppendEntries receiver (§5.3).
    pub(super) fn handle_append(&mut self, from: NodeId, mut req: AppendRequest) {
        if self.role == Role::Leader || self.is_installing_snapshot() {
            // A leader: see below. Installing a snapshot: the log is about to be replaced;
            // the leader sends again once the snapshot is acknowledged.
            // Two leaders in one term cannot happen (Election Safety, §5.2); a peer claiming
            // otherwise is broken, and following it could lose committed entries.
            return;
        }
        let consecutive = req
            .entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.index == req.prev.index + 1 + i as u64);
        if !consecutive {
            // Malformed: refuse it rather than corrupt the log.
            return;
        }
        self.accept_leader(from);
        let committed = self.log.committed;
        // Entries up to our commit index are identical to the leader's (Leader Completeness,
        // §5.4): skip them, so a stale or duplicated append never touches committed entries
        // (which may also be compacted away here).
        if req.prev.index < committed {
            let skip = (committed - req.prev.index) as usize;
            if skip >= req.entries.len() {
                let last = req.prev.index + req.entries.len() as u64;
                let term = req.entries.last().map_or(req.prev.term, |e| e.term);
                self.respond_append(
                    from,
                    AppendResponse::Accepted {
                        last: EntryId::new(term, last),
                    },
                );
                return;
            }
            let prev = req.entries[skip - 1].id();
            req.entries.drain(..skip);
            req.prev = prev;
        }
        // §5.3: reject unless our log holds prev (Log Matching).
        if !self.log.matches(req.prev) {
            let hint = self.conflict_hint(req.prev);
            self.respond_append(
                from,
                AppendResponse::Rejected {
                    rejected_index: req.prev.index,
                    hint,
                },
            );
            return;
        }
        // §5.3: "If an existing entry conflicts with a new one (same index but different
        // terms), delete the existing entry and all that follow it". Entries that match are
        // kept: a stale or reordered append must never truncate them.
        let conflict = if bug!(self, TruncateMatchingSuffix) && !req.entries.is_empty() {
            Some(0)
        } else {
            self.log.find_conflict(&req.entries)
        };
        if let Some(pos) = conflict {
            if req.entries[pos].index <= committed {
                // Cannot happen with a correct leader (we skipped everything up to commit).
                return;
            }
            self.log.truncate_and_append(&req.entries[pos..]);
            self.on_log_truncated(req.entries[pos].index);
            self.track_config_entries(&req.entries[pos..]);
        }
        let last = req
            .entries
            .last()
            .map_or(req.prev, |e| EntryId::new(e.term, e.index));
        // Commit only what the leader has shown to match: a longer tail of ours may differ.
        if self.log.commit_to(req.commit.min(last.index)) {
            self.compact_configs();
        }
        self.respond_append(from, AppendResponse::Accepted { last });
    }

    /// The follower's conflict hint for a rejected `prev` (§5.3).
    fn conflict_hint(&mut self, prev: EntryId) -> ConflictHint {
        let last_index = self.log.last_index();
        if prev.index > last_index {
            return ConflictHint::LogTooShort { last_index };
        }
        match self.log.term(prev.index) {
            Ok(term) => ConflictHint::TermConflict {
                term,
                first_index: self.log.first_index_of_term(term, prev.index),
            },
            Err(e) => {
                if !e.is_out_of_range() {
                    self.storage_errors.push(e);
                }
                // Probe from our commit point; that much is guaranteed to match.
                ConflictHint::LogTooShort {
                    last_index: self.log.committed,
                }
            }
        }
    }

    fn respond_append(&mut self, to: NodeId, resp: AppendResponse) {
        self.send(to, MessageBody::AppendResponse(resp));
    }

    pub(super) fn handle_heartbeat(&mut self, from: NodeId, hb: Heartbeat) {
        if self.role == Role::Leader {
            return; // see handle_append
        }
        self.accept_leader(from);
        // The leader caps the commit index at what it knows we hold.
        self.log.commit_to(hb.commit);
        // The leader sends us a commit index only up to what we acknowledged in its term. If
        // our log ends before it, we lost acknowledged entries (wiped, damaged or rolled-back
        // storage): say so, or the leader would count us for entries we do not have and never
        // resend them.
        let last = self.log.last_index();
        let log_end = (hb.commit > last).then_some(last);
        self.send(
            from,
            MessageBody::HeartbeatResponse(HeartbeatResponse {
                round: hb.round,
                log_end,
            }),
        );
    }

    /// A valid AppendEntries or heartbeat in our term comes from the one leader of the term
    /// (Election Safety): follow it and reset the election timer (§5.2).
    pub(super) fn accept_leader(&mut self, from: NodeId) {
        if self.role != Role::Follower {
            let term = self.term;
            self.become_follower(term, Some(from));
        }
        self.leader = Some(from);
        self.election_elapsed = 0;
    }
}
