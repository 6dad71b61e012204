//! [`NodeInbox`]: where a transport delivers what peers sent to this node.

use bytes::Bytes;
use dengine_core::{Inbox, InboxError, Message};
use tokio::sync::mpsc;

use crate::metric_names as m;

/// What a transport hands to the event loop.
#[derive(Debug)]
pub(crate) enum PeerInput {
    /// A protocol message.
    Message(Message),
    /// A complete, verified snapshot (`InstallSnapshot` metadata and data).
    Snapshot(Message, Bytes),
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
}

impl NodeInbox {
    pub(crate) fn new(tx: mpsc::Sender<PeerInput>) -> Self {
        NodeInbox { tx }
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

    fn deliver_snapshot(&self, message: Message, data: Bytes) -> Result<(), InboxError> {
        self.push(PeerInput::Snapshot(message, data))
    }
}
