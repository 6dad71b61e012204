//! [`NodeInbox`]: where a transport delivers what peers sent to this node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dengine_core::store::SnapshotData;
use dengine_core::{ClusterView, Inbox, InboxError, LogIndex, Membership, Message, NodeId, Term};
use tokio::sync::mpsc;

use crate::metric_names as m;

/// What a transport hands to the event loop.
#[derive(Debug)]
pub(crate) enum PeerInput {
    /// A protocol message.
    Message(Message),
    /// A complete, verified snapshot (`InstallSnapshot` metadata and data).
    Snapshot(Message, SnapshotData),
    /// A member refused this node's traffic: a committed configuration removed it.
    Removed(String),
}

/// What the transport may read about the node without asking the event loop: the committed
/// configuration (to refuse retired senders) and the term and log end (to answer probes of
/// starting members). The event loop keeps it current.
#[derive(Debug, Default)]
pub(crate) struct InboxView {
    term: AtomicU64,
    last_index: AtomicU64,
    committed: RwLock<Arc<Membership>>,
}

impl InboxView {
    pub(crate) fn set_position(&self, term: Term, last_index: LogIndex) {
        self.term.store(term, Ordering::Relaxed);
        self.last_index.store(last_index, Ordering::Relaxed);
    }

    pub(crate) fn set_committed(&self, membership: &Membership) {
        *self.committed.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(membership.clone());
    }

    fn committed(&self) -> Arc<Membership> {
        self.committed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The [`Inbox`] of one node: a cheap, cloneable handle on the node's bounded inbound queue.
///
/// Obtain it from [`NodeBuilder::inbox`](crate::NodeBuilder::inbox) (before the node starts,
/// to build the transport with it) or [`Node::inbox`](crate::Node::inbox). Delivery never
/// blocks: when the queue (`network.peer_queue_len` messages) is full the message is dropped,
/// counted in `dengine_messages_dropped_total{reason="inbox_full"}` and
/// [`InboxError::Full`] is returned; Raft resends what matters.
#[derive(Clone, Debug)]
pub struct NodeInbox {
    tx: mpsc::Sender<PeerInput>,
    view: Arc<InboxView>,
}

impl NodeInbox {
    pub(crate) fn new(tx: mpsc::Sender<PeerInput>, view: Arc<InboxView>) -> Self {
        NodeInbox { tx, view }
    }

    fn push(&self, input: PeerInput) -> Result<(), InboxError> {
        self.tx.try_send(input).map_err(|e| {
            let (error, reason) = match e {
                mpsc::error::TrySendError::Full(_) => (InboxError::Full, m::REASON_INBOX_FULL),
                mpsc::error::TrySendError::Closed(_) => {
                    (InboxError::ShuttingDown, m::REASON_SHUTTING_DOWN)
                }
            };
            metrics::counter!(m::MESSAGES_DROPPED_TOTAL, m::LABEL_REASON => reason).increment(1);
            error
        })
    }
}

impl Inbox for NodeInbox {
    fn deliver(&self, message: Message) -> Result<(), InboxError> {
        self.push(PeerInput::Message(message))
    }

    fn deliver_snapshot(&self, message: Message, data: SnapshotData) -> Result<(), InboxError> {
        self.push(PeerInput::Snapshot(message, data))
    }

    fn is_retired(&self, from: NodeId) -> bool {
        self.view.committed().is_retired(from)
    }

    fn describe(&self) -> Option<ClusterView> {
        Some(ClusterView {
            term: self.view.term.load(Ordering::Relaxed),
            last_index: self.view.last_index.load(Ordering::Relaxed),
            membership: (*self.view.committed()).clone(),
        })
    }

    fn removed_from_cluster(&self, detail: String) {
        // Best effort: if the queue is full, the next refusal tells again.
        let _ = self.tx.try_send(PeerInput::Removed(detail));
    }
}
