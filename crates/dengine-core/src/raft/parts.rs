//! The pieces of a node's state that carry logic of their own: the queue of reads waiting for
//! leadership confirmation (its rules are in `read.rs`, thesis §6.4) and a leader transfer in
//! progress (`transfer.rs`, thesis §3.10).

use std::collections::VecDeque;

use crate::message::ReadCtx;
use crate::ready::ReadState;
use crate::types::{LogIndex, NodeId};

/// A read waiting for a heartbeat round to confirm leadership.
#[derive(Clone, Copy, Debug)]
pub(super) struct PendingRead {
    pub(super) ctx: ReadCtx,
    /// Who asked: this node, or a follower that forwarded it.
    pub(super) origin: NodeId,
    pub(super) index: LogIndex,
    /// The first heartbeat round sent after the read arrived.
    pub(super) round: u64,
}

/// Heartbeat rounds and the reads that wait on them.
#[derive(Debug, Default)]
pub(super) struct ReadQueue {
    /// Last heartbeat round sent (monotonic across terms, so late answers cannot confuse).
    pub(super) round: u64,
    /// Send time of recent rounds, for leases.
    sent_at: VecDeque<(u64, u64)>,
    pub(super) pending: VecDeque<PendingRead>,
    /// A heartbeat round must be sent at the end of this turn to confirm pending reads.
    pub(super) round_needed: bool,
    /// Confirmed reads waiting for the state machine to apply up to their index.
    pub(super) waiting_apply: Vec<ReadState>,
    /// Reads this follower forwarded to its current leader and not yet heard back about.
    pub(super) forwarded: Vec<ReadCtx>,
    /// Lease reads this node confirmed by its lease, without a heartbeat round (its own and
    /// those forwarded to it), since it started.
    pub(super) served_by_lease: u64,
}

impl ReadQueue {
    /// The last heartbeat round sent (0 before the first).
    pub(super) fn last_round(&self) -> u64 {
        self.round
    }

    /// Starts a new heartbeat round at `now`, forgetting rounds too old to back a lease.
    pub(super) fn next_round(&mut self, now: u64, window: u64) -> u64 {
        self.round += 1;
        self.round_needed = false;
        self.sent_at.push_back((self.round, now));
        while self
            .sent_at
            .front()
            .is_some_and(|&(_, at)| at.saturating_add(window) < now)
        {
            self.sent_at.pop_front();
        }
        self.round
    }

    pub(super) fn reset_for_new_term(&mut self) {
        self.sent_at.clear();
        self.pending.clear();
        self.round_needed = false;
    }

    /// When heartbeat round `round` was sent, if it is recent enough to remember.
    pub(super) fn sent_at(&self, round: u64) -> Option<u64> {
        self.sent_at
            .iter()
            .find(|&&(r, _)| r == round)
            .map(|&(_, at)| at)
    }
}

/// A transfer in progress.
#[derive(Clone, Copy, Debug)]
pub(super) struct Transfer {
    pub(super) target: NodeId,
    /// Ticks since the transfer started.
    pub(super) elapsed: u64,
    pub(super) timeout_now_sent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rounds are remembered exactly as long as they could back a lease: a round sent
    /// `window` ticks ago is kept, an older one forgotten (so the queue stays bounded however
    /// long a leader leads).
    #[test]
    fn rounds_older_than_the_window_are_forgotten() {
        let mut q = ReadQueue::default();
        assert_eq!(q.last_round(), 0);
        for now in 0..100 {
            assert_eq!(q.next_round(now, 10), now + 1);
        }
        assert_eq!(q.last_round(), 100);
        assert_eq!(q.sent_at(90), Some(89), "sent 10 ticks ago: kept");
        assert_eq!(q.sent_at(89), None, "sent 11 ticks ago: forgotten");
        assert_eq!(q.sent_at.len(), 11);
    }
}
