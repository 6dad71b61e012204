//! Counters of what the transport did, for metrics and tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters (shared by all clones of a transport).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_unknown_peer: AtomicU64,
    pub(crate) dropped_unreachable: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) dropped_inbox_full: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) snapshots_sent: AtomicU64,
    pub(crate) snapshots_received: AtomicU64,
    pub(crate) snapshot_resumes: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a dropped message here and in the `dengine_messages_dropped_total{reason}`
    /// metric (the name `dengine_node::metric_names` documents).
    pub(crate) fn dropped(counter: &AtomicU64, reason: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("dengine_messages_dropped_total", "reason" => reason).increment(1);
    }

    pub(crate) fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            sent: get(&self.sent),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_unknown_peer: get(&self.dropped_unknown_peer),
            dropped_unreachable: get(&self.dropped_unreachable),
            received: get(&self.received),
            refused: get(&self.refused),
            dropped_inbox_full: get(&self.dropped_inbox_full),
            connects: get(&self.connects),
            connect_failures: get(&self.connect_failures),
            snapshots_sent: get(&self.snapshots_sent),
            snapshots_received: get(&self.snapshots_received),
            snapshot_resumes: get(&self.snapshot_resumes),
        }
    }
}

/// A copy of the transport's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Messages handed to a connection (stream or election call).
    pub sent: u64,
    /// Messages dropped because the peer's queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped because no address is known for the recipient.
    pub dropped_unknown_peer: u64,
    /// Messages dropped because the peer was unreachable (queued while disconnected, or an
    /// election call failed).
    pub dropped_unreachable: u64,
    /// Messages received from peers and handed to the inbox.
    pub received: u64,
    /// Requests refused: wrong cluster or recipient, malformed.
    pub refused: u64,
    /// Messages received but dropped because this node's inbox was full.
    pub dropped_inbox_full: u64,
    /// Connections established.
    pub connects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Snapshots delivered to peers.
    pub snapshots_sent: u64,
    /// Snapshots received, verified and handed to the inbox.
    pub snapshots_received: u64,
    /// Times a snapshot stream resumed or restarted after a bad chunk or a broken stream.
    pub snapshot_resumes: u64,
}

impl TransportStats {
    /// All messages dropped on the sending side, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_unknown_peer + self.dropped_unreachable
    }
}
