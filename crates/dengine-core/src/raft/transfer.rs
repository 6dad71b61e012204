//! Leadership transfer (thesis §3.10): the leader stops taking proposals, brings the target
//! up to date, and sends it TimeoutNow; the target campaigns at once, and its vote requests
//! bypass leader stickiness. The transfer is abandoned after an election timeout.

use super::Raft;
use super::errors::TransferError;
use super::parts::Transfer;
use crate::message::MessageBody;
use crate::store::LogReader;
use crate::types::{NodeId, Role};

impl<L: LogReader> Raft<L> {
    /// Starts handing leadership to `to`. Proposals are refused until the transfer completes
    /// (this node steps down when `to` wins) or is abandoned after an election timeout.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id() {
            return Err(TransferError::AlreadyLeader(to));
        }
        if !self.membership.voters.contains(&to) {
            return Err(TransferError::NotAVoter(to));
        }
        self.transfer = Some(Transfer {
            target: to,
            elapsed: 0,
            timeout_now_sent: false,
        });
        // Leases stop here: the target's election will bypass the followers' stickiness that
        // leases rely on.
        self.lease_blocked_until = self.now + 2 * self.cfg.election_timeout_ticks;
        self.maybe_send_timeout_now();
        if self.transfer.is_some_and(|t| !t.timeout_now_sent) {
            self.send_appends(to, false);
        }
        Ok(())
    }

    /// The transfer target, if a transfer is in progress.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.target)
    }

    /// Sends TimeoutNow once the target's log matches ours.
    pub(super) fn maybe_send_timeout_now(&mut self) {
        let Some(t) = self.transfer else {
            return;
        };
        if t.timeout_now_sent {
            return;
        }
        let caught_up = self
            .progress
            .get(&t.target)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            if let Some(t) = self.transfer.as_mut() {
                t.timeout_now_sent = true;
            }
            self.lease_blocked_until = self.now + 2 * self.cfg.election_timeout_ticks;
            self.send(t.target, MessageBody::TimeoutNow);
        }
    }

    /// Counts a tick of the transfer; abandons it after an election timeout (thesis §3.10).
    pub(super) fn tick_transfer(&mut self) {
        if let Some(t) = self.transfer.as_mut() {
            t.elapsed += 1;
            if t.elapsed >= self.cfg.election_timeout_ticks {
                self.transfer = None;
            }
        }
    }

    /// TimeoutNow from our leader: campaign now, without pre-vote, flagged as a transfer.
    pub(super) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.leader != Some(from) || !self.is_promotable() || self.role == Role::Leader {
            return;
        }
        self.start_election(true);
    }
}
