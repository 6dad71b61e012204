//! What a leader knows about each follower's log, and its flow control.
//!
//! A follower is either being *probed* (the leader does not know where their logs match and
//! sends one append at a time) or *replicated* to (the leader streams appends optimistically,
//! up to a bounded window of unacknowledged messages). The window keeps a slow or unreachable
//! follower from consuming unbounded memory and bandwidth.

use std::collections::VecDeque;

use crate::types::LogIndex;

/// Replication state of one follower, as seen by the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// Finding the point where the logs match: one append in flight at a time.
    Probe,
    /// Logs match up to `match_index`; appends are pipelined within the in-flight window.
    Replicate,
    /// The follower needs entries the leader has compacted: a snapshot covering `index` is
    /// being sent; appends wait until it is installed or reported failed.
    Snapshot {
        /// Last index covered by the snapshot being sent.
        index: LogIndex,
    },
}

/// Unacknowledged append messages to one follower: (last index sent, entry bytes).
#[derive(Clone, Debug)]
pub(crate) struct Inflights {
    sent: VecDeque<(LogIndex, u64)>,
    max_messages: usize,
}

impl Inflights {
    pub(crate) fn new(max_messages: usize) -> Self {
        Inflights {
            sent: VecDeque::new(),
            max_messages,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.sent.len() >= self.max_messages
    }

    pub(crate) fn len(&self) -> usize {
        self.sent.len()
    }

    pub(crate) fn add(&mut self, last: LogIndex, bytes: u64) {
        self.sent.push_back((last, bytes));
    }

    /// Forgets every message whose entries are all acknowledged up to `index`.
    pub(crate) fn free_to(&mut self, index: LogIndex) {
        while self.sent.front().is_some_and(|&(last, _)| last <= index) {
            self.sent.pop_front();
        }
    }

    /// Forgets the oldest message, to let one more through when acks may have been lost.
    pub(crate) fn free_first(&mut self) {
        self.sent.pop_front();
    }

    pub(crate) fn clear(&mut self) {
        self.sent.clear();
    }
}

/// The leader's view of one peer (nextIndex and matchIndex of Figure 2, plus flow control).
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to be replicated (durably) on the peer.
    pub(crate) match_index: LogIndex,
    /// Index of the next entry to send.
    pub(crate) next_index: LogIndex,
    pub(crate) state: ReplicationState,
    /// In probe state: an append is outstanding, wait for an answer or the next heartbeat.
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    /// Heard from since the last CheckQuorum round (thesis §6.2).
    pub(crate) recent_active: bool,
    /// Highest heartbeat round the peer acknowledged in this term.
    pub(crate) acked_round: u64,
    /// Highest commit index sent to the peer, to avoid redundant commit-only appends.
    pub(crate) sent_commit: LogIndex,
    /// The last heartbeat round sent when the peer was last found to have lost entries it
    /// had acknowledged; reports answering that round or earlier describe the state already
    /// dealt with.
    pub(crate) regressed_at_round: u64,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex, max_inflight: usize) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            inflights: Inflights::new(max_inflight),
            recent_active: false,
            acked_round: 0,
            sent_commit: 0,
            regressed_at_round: 0,
        }
    }

    /// The peer reports, in answer to heartbeat `round`, that its log ends at `log_end` —
    /// below what it acknowledged. If that is news (`log_end` below `match_index`, and the
    /// report answers a heartbeat sent after the last such finding), forget what it
    /// acknowledged beyond `log_end` and probe from there; `current_round` is the last round
    /// sent. Returns the match index that was forgotten.
    pub(crate) fn regress(
        &mut self,
        log_end: LogIndex,
        round: u64,
        current_round: u64,
    ) -> Option<LogIndex> {
        if log_end >= self.match_index || round <= self.regressed_at_round {
            return None;
        }
        let acknowledged = self.match_index;
        self.match_index = log_end;
        self.sent_commit = self.sent_commit.min(log_end);
        self.regressed_at_round = current_round;
        self.become_probe();
        Some(acknowledged)
    }

    pub(crate) fn become_probe(&mut self) {
        self.state = ReplicationState::Probe;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflights.clear();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.next_index = self.next_index.max(self.match_index + 1);
        self.probe_sent = false;
    }

    /// Whether the leader should hold back further appends to this peer.
    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ReplicationState::Probe => self.probe_sent,
            ReplicationState::Replicate => self.inflights.is_full(),
            ReplicationState::Snapshot { .. } => true,
        }
    }

    /// Starts sending a snapshot covering `index`.
    pub(crate) fn become_snapshot(&mut self, index: LogIndex) {
        self.state = ReplicationState::Snapshot { index };
        self.inflights.clear();
        self.probe_sent = false;
    }

    /// Records that the peer holds the log up to `index`. Returns whether it was news.
    pub(crate) fn maybe_update(&mut self, index: LogIndex) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
        }
        self.next_index = self.next_index.max(index + 1);
        self.probe_sent = false;
        updated
    }

    /// Handles a rejection of an append whose `prev.index` was `rejected`; `next` is where the
    /// leader's conflict search says to continue. Returns false for stale rejections (of a
    /// message sent before the peer's position was learned), which must not move `next_index`
    /// backwards (§5.3 with pipelining: duplicated or reordered rejections are harmless).
    pub(crate) fn maybe_decrease_to(&mut self, rejected: LogIndex, next: LogIndex) -> bool {
        // The peer acknowledged everything up to match_index, so it cannot lack an entry
        // there now: a rejection at or below it is a delayed or duplicated answer to an
        // older message.
        if rejected <= self.match_index {
            return false;
        }
        match self.state {
            ReplicationState::Replicate => self.become_probe(),
            // An old rejection while a snapshot is on its way changes nothing.
            ReplicationState::Snapshot { .. } => return false,
            ReplicationState::Probe => {
                // Only the answer to the probe in flight (prev = next_index - 1) counts.
                if rejected + 1 != self.next_index {
                    return false;
                }
                self.probe_sent = false;
            }
        }
        // Continue at the hint, but never at or below what is known to match, and never past
        // the entry that was just rejected (rejected > match_index >= 0 here).
        self.next_index = next.max(self.match_index + 1).min(rejected);
        true
    }

    /// Records that an append ending at `last` with `bytes` of entries was sent.
    pub(crate) fn sent_entries(&mut self, last: LogIndex, bytes: u64) {
        match self.state {
            ReplicationState::Replicate => {
                self.next_index = last + 1;
                self.inflights.add(last, bytes);
            }
            ReplicationState::Probe => self.probe_sent = true,
            ReplicationState::Snapshot { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_window_pauses_when_full_and_reopens_on_ack() {
        let mut p = Progress::new(1, 2);
        p.become_replicate();
        p.sent_entries(3, 10);
        assert!(!p.is_paused());
        p.sent_entries(5, 10);
        assert!(p.is_paused(), "two messages in flight fill a window of two");
        assert_eq!(p.next_index, 6);
        p.maybe_update(3);
        p.inflights.free_to(3);
        assert!(!p.is_paused());
        assert_eq!(p.inflights.len(), 1);
    }

    #[test]
    fn a_regression_is_taken_once_per_round_and_only_below_match() {
        let mut p = Progress::new(1, 8);
        p.maybe_update(10);
        p.become_replicate();
        assert_eq!(p.regress(10, 5, 5), None, "not below what it acknowledged");
        assert_eq!(p.regress(3, 5, 7), Some(10));
        assert_eq!((p.match_index, p.next_index), (3, 4));
        assert_eq!(p.state, ReplicationState::Probe);
        p.maybe_update(10);
        // Answers to heartbeats sent before the reset (rounds <= 7) describe the old state.
        assert_eq!(p.regress(0, 6, 9), None);
        assert_eq!(p.regress(0, 7, 9), None);
        assert_eq!(p.match_index, 10);
        assert_eq!(p.regress(0, 8, 9), Some(10), "a later round is news");
    }

    #[test]
    fn probe_sends_one_message_at_a_time() {
        let mut p = Progress::new(5, 8);
        p.sent_entries(7, 1);
        assert!(p.is_paused());
        assert_eq!(
            p.next_index, 5,
            "probing does not advance next_index optimistically"
        );
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(10, 8);
        p.match_index = 6;
        p.become_replicate();
        assert!(!p.maybe_decrease_to(5, 1), "rejected below match: stale");
        assert!(p.maybe_decrease_to(8, 3));
        assert_eq!(p.state, ReplicationState::Probe);
        assert_eq!(p.next_index, 7, "never below match + 1");
        assert!(
            !p.maybe_decrease_to(8, 3),
            "probe only accepts the rejection of next - 1"
        );
        assert!(
            !p.maybe_decrease_to(6, 3),
            "a duplicate rejection at match is stale"
        );
    }

    #[test]
    fn an_ack_is_news_only_above_match() {
        let mut p = Progress::new(1, 8);
        assert!(p.maybe_update(4));
        assert!(!p.maybe_update(4), "a duplicated ack is not news");
        assert!(!p.maybe_update(2), "a reordered older ack is not news");
        assert_eq!(p.match_index, 4);
    }

    #[test]
    fn an_ack_moves_next_index_past_it() {
        // Figure 2: nextIndex stays above matchIndex. A probe does not advance next_index,
        // so its ack can cover entries at and beyond it.
        let mut p = Progress::new(5, 8);
        p.sent_entries(7, 3);
        assert!(p.maybe_update(7));
        assert_eq!((p.match_index, p.next_index), (7, 8));
    }
}
