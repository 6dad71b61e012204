//! Linearizable reads without writing to the log: ReadIndex and lease reads (thesis §6.4,
//! §6.4.1), including reads forwarded by followers.
//!
//! A read is served at the leader's commit index once (a) the leader has committed an entry
//! of its own term, so that index covers every write acknowledged before the read, and (b) a
//! quorum has confirmed, after the read arrived, that this node is still leader. A lease read
//! replaces (b) by the knowledge that no other leader can have been elected yet: followers
//! ignore other candidates for an election timeout after hearing from us.

use super::parts::PendingRead;
use super::{Raft, bug};
use crate::message::{MessageBody, ReadCtx, ReadIndexRequest, ReadIndexResponse};
use crate::ready::{FailedRead, ReadError, ReadMode, ReadState};
use crate::store::LogReader;
use crate::types::{LogIndex, NodeId, Role};

impl<L: LogReader> Raft<L> {
    /// Asks for a linearizable read identified by `ctx`. When it is safe, a later
    /// [`Ready::read_states`](crate::Ready::read_states) carries `ctx` with the index the state
    /// machine has reached; if it cannot be served, [`Ready::failed_reads`](crate::Ready) says
    /// why. A follower forwards the request to its leader (thesis §6.4); the runtime should
    /// time out reads whose answer never comes (the network may lose it).
    pub fn read_index(&mut self, ctx: ReadCtx, mode: ReadMode) -> Result<(), ReadError> {
        match (self.role, self.leader) {
            (Role::Leader, _) => self.leader_read(ctx, self.id(), mode == ReadMode::Lease),
            (Role::Follower, Some(leader)) => {
                self.reads.forwarded.push(ctx);
                self.send(
                    leader,
                    MessageBody::ReadIndexRequest(ReadIndexRequest {
                        ctx,
                        lease: mode == ReadMode::Lease,
                    }),
                );
                Ok(())
            }
            _ => Err(ReadError::NotLeader {
                leader: self.leader,
            }),
        }
    }

    fn leader_read(&mut self, ctx: ReadCtx, origin: NodeId, lease: bool) -> Result<(), ReadError> {
        // Thesis §6.4 step 1: until it commits an entry of its term, a new leader does not know
        // which of its entries are committed, so its commit index may miss acknowledged writes.
        if !self.committed_in_current_term() && !bug!(self, ReadIndexBeforeFirstCommit) {
            return Err(ReadError::LeaderNotReady);
        }
        let index = self.log.committed;
        let me = self.id();
        let sole_voter = self.membership.all_voters().into_iter().eq([me]);
        if sole_voter {
            self.read_confirmed(ctx, origin, index);
            return Ok(());
        }
        if lease && self.lease_valid() {
            self.reads.served_by_lease += 1;
            self.read_confirmed(ctx, origin, index);
            return Ok(());
        }
        // Thesis §6.4 step 2: confirm leadership with a fresh heartbeat round. All reads
        // arriving in one turn share the round.
        self.reads.pending.push_back(PendingRead {
            ctx,
            origin,
            index,
            round: self.reads.round + 1,
        });
        self.reads.round_needed = true;
        Ok(())
    }

    /// The highest heartbeat round a quorum of voters (counting us) has answered.
    fn quorum_round(&self) -> u64 {
        let me = self.id();
        let own = self.reads.round;
        self.quorum_value(|v| {
            if v == me {
                own
            } else {
                self.progress.get(&v).map_or(0, |p| p.acked_round)
            }
        })
    }

    /// Thesis §6.4.1: the lease starts when the last round a quorum answered was *sent*;
    /// those followers will not vote for another candidate until an election timeout after
    /// they received it, which was later. The drift margin covers clocks that run at
    /// different rates. Without CheckQuorum, followers do not honour leases at all.
    fn lease_valid(&self) -> bool {
        if !self.cfg.check_quorum
            || self.role != Role::Leader
            || self.transfer.is_some()
            || self.now < self.lease_blocked_until
        {
            return false;
        }
        let Some(sent) = self.reads.sent_at(self.quorum_round()) else {
            return false;
        };
        let lease = self.cfg.election_timeout_ticks - self.cfg.lease_drift_ticks;
        self.now < sent.saturating_add(lease)
    }

    /// Confirms pending reads whose round a quorum has answered.
    pub(super) fn advance_reads(&mut self) {
        if self.role != Role::Leader || self.reads.pending.is_empty() {
            return;
        }
        let confirmed = self.quorum_round();
        while let Some(read) = self.reads.pending.front().copied() {
            if read.round > confirmed {
                break;
            }
            self.reads.pending.pop_front();
            self.read_confirmed(read.ctx, read.origin, read.index);
        }
    }

    fn read_confirmed(&mut self, ctx: ReadCtx, origin: NodeId, index: LogIndex) {
        if origin == self.id() {
            self.reads.waiting_apply.push(ReadState { ctx, index });
            self.release_reads();
        } else {
            self.send(
                origin,
                MessageBody::ReadIndexResponse(ReadIndexResponse {
                    ctx,
                    index: Some(index),
                }),
            );
        }
    }

    /// Moves reads whose index the state machine has reached to the output.
    pub(super) fn release_reads(&mut self) {
        let applied = self.log.applied;
        let ready = &mut self.read_states;
        self.reads.waiting_apply.retain(|r| {
            if r.index <= applied {
                ready.push(*r);
                false
            } else {
                true
            }
        });
    }

    pub(super) fn reads_round_needed(&self) -> bool {
        self.reads.round_needed
    }

    /// Sends the heartbeat round that pending reads wait for, if one is due.
    pub(super) fn flush_read_round(&mut self) {
        if self.reads.round_needed && self.role == Role::Leader {
            self.broadcast_heartbeat();
            // With no other voter to ask, the round is confirmed by us alone.
            self.advance_reads();
        }
    }

    pub(super) fn handle_read_index_request(&mut self, from: NodeId, req: ReadIndexRequest) {
        let served =
            self.role == Role::Leader && self.leader_read(req.ctx, from, req.lease).is_ok();
        if !served {
            self.send(
                from,
                MessageBody::ReadIndexResponse(ReadIndexResponse {
                    ctx: req.ctx,
                    index: None,
                }),
            );
        }
    }

    pub(super) fn handle_read_index_response(&mut self, from: NodeId, resp: ReadIndexResponse) {
        // Only answers to reads still outstanding count: a read already failed because the
        // leader changed must not also succeed.
        let Some(pos) = self.reads.forwarded.iter().position(|&c| c == resp.ctx) else {
            return;
        };
        self.reads.forwarded.swap_remove(pos);
        match resp.index {
            Some(index) => {
                self.reads.waiting_apply.push(ReadState {
                    ctx: resp.ctx,
                    index,
                });
                self.release_reads();
            }
            None => {
                let error = if self.leader == Some(from) {
                    ReadError::LeaderNotReady
                } else {
                    ReadError::NotLeader {
                        leader: self.leader,
                    }
                };
                self.failed_reads.push(FailedRead {
                    ctx: resp.ctx,
                    error,
                });
            }
        }
    }

    /// Fails reads forwarded to a leader this node no longer follows.
    pub(super) fn fail_forwarded_reads(&mut self) {
        let leader = self.leader;
        for ctx in self.reads.forwarded.drain(..) {
            self.failed_reads.push(FailedRead {
                ctx,
                error: ReadError::NotLeader { leader },
            });
        }
    }

    /// A leader that steps down fails the reads it had not confirmed.
    pub(super) fn fail_pending_reads(&mut self, leader: Option<NodeId>) {
        let pending: Vec<PendingRead> = self.reads.pending.drain(..).collect();
        self.reads.round_needed = false;
        for read in pending {
            if read.origin == self.id() {
                self.failed_reads.push(FailedRead {
                    ctx: read.ctx,
                    error: ReadError::NotLeader { leader },
                });
            } else {
                self.send(
                    read.origin,
                    MessageBody::ReadIndexResponse(ReadIndexResponse {
                        ctx: read.ctx,
                        index: None,
                    }),
                );
            }
        }
    }
}
