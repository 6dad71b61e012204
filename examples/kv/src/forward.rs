//! Writes a follower forwards to the leader, batched on one long-lived stream per leader
//! (`dengine.kv.v1.Forward/ProposeStream`).
//!
//! Two thirds of a 3-member cluster's client writes arrive at a follower. Forwarding each as
//! its own unary RPC cost an HTTP/2 stream, its headers and a task on both members per write;
//! on the stream, the writes queued while the previous message was in flight travel as one
//! message, and the leader answers them as they commit, also batched.
//!
//! The follower side is [`ForwardStreams`]: one task per leader address owns the stream and
//! the writes in flight on it. The leader side is [`serve`]: one task per stream proposes its
//! writes concurrently (at most [`MAX_IN_FLIGHT`] at a time) and sends the answers back, those
//! ready together in one message.
//!
//! Outcomes follow the unary call's: the leader's refusal is passed on as it came; a write
//! sent on a stream that then broke, or not answered within [`FORWARD_DEADLINE`], has an
//! unknown outcome (it may have been applied) and is reported as a timeout; a write that was
//! queued but never sent is reported as unavailable (it was not applied; retry).
//!
//! With client sessions on, a write carries its place in the forwarding member's session
//! ([`ForwardSession`]) and the leader proposes it exactly once however often it arrives;
//! the session's own refusals come back with their kind ([`FORWARD_KIND`]), and the caller
//! (`node_backend.rs`) resends a write of unknown outcome instead of reporting it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use dengine_core::NodeId;
use dengine_net_grpc::GrpcTransport;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::backend::BackendError;
use crate::proto::dengine::kv::v1::forward_client::ForwardClient;
use crate::proto::dengine::kv::v1::{
    ForwardBatch, ForwardFailure, ForwardItem, ForwardReplyBatch, ForwardResult, ForwardSession,
    forward_result,
};

/// The metadata key, on a leader's refusal of a forwarded write in a session, of what the
/// session said (`session-unknown`, `session-too-many`, `session-acknowledged`,
/// `session-invalid`, `response-lost`); carried back as `ForwardFailure::kind`.
pub(crate) const FORWARD_KIND: &str = "dengine-forward-kind";

/// Writes in flight on one stream, on either side: the follower stops taking new writes
/// from its queue, and the leader stops reading the stream, at this many. Both use the same
/// bound, so the leader always reads what the follower may send, and neither waits on the
/// other while it holds answers.
pub(crate) const MAX_IN_FLIGHT: usize = 4096;

/// How long a follower waits for the leader's answer to a forwarded write before reporting
/// an unknown outcome. The leader answers sooner on its own (its `client.propose_timeout_ms`,
/// 5 s by default); this bounds the wait for a leader that stopped answering altogether (a
/// paused process, a black-holed connection).
pub(crate) const FORWARD_DEADLINE: Duration = Duration::from_secs(15);

/// Entries per message, on either side.
const MAX_BATCH: usize = 1024;

/// The answer to one forwarded write.
pub(crate) type Answer = Result<Bytes, BackendError>;

/// The answer to one forwarded write and, for a refusal of a write in a session, what the
/// session said ([`FORWARD_KIND`]; empty otherwise).
pub(crate) type Answered = (Answer, String);

/// What a stream task tells the caller of a write.
enum Reply {
    Done(Answered),
    /// The leader does not know the stream call; the write was not proposed.
    Unsupported,
}

/// A write waiting in a stream's queue.
struct Queued {
    command: Bytes,
    trace: Vec<(String, String)>,
    session: Option<ForwardSession>,
    reply: oneshot::Sender<Reply>,
}

/// The follower side: one stream task per leader address, started on the first write to it
/// and restarted after its stream broke.
#[derive(Debug)]
pub(crate) struct ForwardStreams {
    queues: Mutex<HashMap<String, mpsc::Sender<Queued>>>,
    /// Leaders that answered `ProposeStream` with UNIMPLEMENTED (an older version): their
    /// writes go one unary call each.
    unary_only: Mutex<HashSet<String>>,
    /// How long a write waits for the leader's answer ([`FORWARD_DEADLINE`]).
    deadline: Duration,
}

impl Default for ForwardStreams {
    fn default() -> Self {
        ForwardStreams {
            queues: Mutex::default(),
            unary_only: Mutex::default(),
            deadline: FORWARD_DEADLINE,
        }
    }
}

/// Where and how a stream task connects.
pub(crate) struct Link {
    pub(crate) address: String,
    pub(crate) channel: Channel,
    pub(crate) transport: GrpcTransport,
    pub(crate) from: NodeId,
}

impl ForwardStreams {
    /// Whether writes to `address` must go as unary calls.
    pub(crate) fn is_unary_only(&self, address: &str) -> bool {
        self.unary_only.lock().contains(address)
    }

    /// Forwards `command` (in its `session`, if any) on the stream to `link.address` and
    /// waits for the leader's answer. `Err(Unsupported)` when the leader has no stream
    /// service: the caller sends it unary.
    pub(crate) async fn forward(
        self: &Arc<Self>,
        link: impl FnOnce() -> Result<Link, BackendError>,
        address: &str,
        command: Bytes,
        trace: Vec<(String, String)>,
        session: Option<ForwardSession>,
    ) -> Result<Answered, Unsupported> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            command,
            trace,
            session,
            reply,
        };
        // Looked up and started under one lock: concurrent first writes share one stream.
        let queue = {
            let mut queues = self.queues.lock();
            match queues.get(address) {
                Some(queue) if !queue.is_closed() => queue.clone(),
                _ => match link() {
                    Ok(link) => {
                        let queue = self.start(link);
                        queues.insert(address.to_string(), queue.clone());
                        queue
                    }
                    Err(e) => return Ok((Err(e), String::new())),
                },
            }
        };
        if let Err(mpsc::error::SendError(_)) = queue.send(queued).await {
            // The task ended between the lookup and the send: the write was not sent.
            return Ok((
                Err(BackendError::Unavailable(
                    "the stream to the leader closed before the write was sent; it was not \
                     applied, retry"
                        .into(),
                )),
                String::new(),
            ));
        }
        match answer.await {
            Ok(Reply::Unsupported) => Err(Unsupported),
            Ok(Reply::Done(answered)) => Ok(answered),
            Err(_) => Ok((
                Err(BackendError::Timeout(
                    "forwarding to the leader failed: the stream task ended; the write may or \
                     may not have been applied"
                        .into(),
                )),
                String::new(),
            )),
        }
    }

    /// Starts the task of a stream to `link.address`; its queue.
    fn start(self: &Arc<Self>, link: Link) -> mpsc::Sender<Queued> {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        // Weak: the queue's senders live in `streams`, and the task ends when they are gone.
        let streams = Arc::downgrade(self);
        let deadline = self.deadline;
        tokio::spawn(async move {
            let address = link.address.clone();
            run_stream(link, rx, &streams, deadline).await;
            if let Some(streams) = streams.upgrade() {
                let mut queues = streams.queues.lock();
                if queues.get(&address).is_some_and(|q| q.is_closed()) {
                    queues.remove(&address);
                }
            }
        });
        tx
    }
}

/// The leader has no `ProposeStream` (a member of an older version).
#[derive(Debug)]
pub(crate) struct Unsupported;

/// A write sent and waiting for its answer.
struct InFlight {
    sent: Instant,
    reply: oneshot::Sender<Reply>,
}

/// Owns one stream to a leader until it breaks or every sender is gone. A leader that does
/// not know the stream call is marked unary-only in `streams` before its writes are handed
/// back.
async fn run_stream(
    link: Link,
    mut rx: mpsc::Receiver<Queued>,
    streams: &Weak<ForwardStreams>,
    deadline: Duration,
) {
    let Some(first) = rx.recv().await else {
        return;
    };
    let (out_tx, out_rx) = mpsc::unbounded_channel::<ForwardBatch>();
    let mut in_flight: HashMap<u64, InFlight> = HashMap::new();
    let mut next_id = 0u64;
    let mut send =
        |first: Queued, rx: &mut mpsc::Receiver<Queued>, in_flight: &mut HashMap<u64, InFlight>| {
            let mut items = Vec::new();
            let mut queued = Some(first);
            while let Some(q) = queued.take() {
                next_id += 1;
                items.push(ForwardItem {
                    id: next_id,
                    command: q.command,
                    trace: q.trace.into_iter().collect(),
                    session: q.session,
                });
                in_flight.insert(
                    next_id,
                    InFlight {
                        sent: Instant::now(),
                        reply: q.reply,
                    },
                );
                if items.len() < MAX_BATCH && in_flight.len() < MAX_IN_FLIGHT {
                    queued = rx.try_recv().ok();
                }
            }
            // Unbounded, but never more than MAX_IN_FLIGHT writes deep.
            out_tx
                .send(ForwardBatch {
                    from: link.from,
                    items,
                })
                .is_ok()
        };
    // The leader answers the call once it has read the first message (it checks the sender's
    // credentials against it), so that message goes out before the call is awaited.
    send(first, &mut rx, &mut in_flight);
    let mut client = ForwardClient::new(link.channel.clone());
    let call = client.propose_stream(
        link.transport
            .peer_request(UnboundedReceiverStream::new(out_rx)),
    );
    let opened = tokio::time::timeout(deadline, call).await;
    let (mut inbound, unsupported): (Option<Streaming<ForwardReplyBatch>>, bool) = match opened {
        Ok(Ok(response)) => (Some(response.into_inner()), false),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => (None, true),
        Ok(Err(status)) => {
            fail_all(&mut in_flight, &status);
            (None, false)
        }
        Err(_) => {
            fail_all(
                &mut in_flight,
                &Status::deadline_exceeded(format!(
                    "the leader at {} did not answer within {deadline:?}",
                    link.address
                )),
            );
            (None, false)
        }
    };
    if unsupported {
        if let Some(streams) = streams.upgrade() {
            streams.unary_only.lock().insert(link.address.clone());
        }
        // Nothing was proposed: hand the writes back to be sent one call each.
        for (_, w) in in_flight.drain() {
            let _ = w.reply.send(Reply::Unsupported);
        }
    }
    let ended = match inbound.as_mut() {
        None => None,
        Some(inbound) => Some(pump(inbound, &mut rx, &mut in_flight, &mut send, deadline).await),
    };
    if let Some(status) = ended {
        fail_all(&mut in_flight, &status);
    }
    // Queued writes were never sent: not applied, safe to retry.
    rx.close();
    while let Ok(q) = rx.try_recv() {
        let reply = if unsupported {
            Reply::Unsupported
        } else {
            Reply::Done((
                Err(BackendError::Unavailable(
                    "the stream to the leader broke before the write was sent; it was not \
                     applied, retry"
                        .into(),
                )),
                String::new(),
            ))
        };
        let _ = q.reply.send(reply);
    }
}

/// Moves writes from the queue to the stream and answers from the stream to their callers,
/// until the stream ends (the returned status says why) or every sender is gone.
async fn pump(
    inbound: &mut Streaming<ForwardReplyBatch>,
    rx: &mut mpsc::Receiver<Queued>,
    in_flight: &mut HashMap<u64, InFlight>,
    send: &mut impl FnMut(Queued, &mut mpsc::Receiver<Queued>, &mut HashMap<u64, InFlight>) -> bool,
    deadline: Duration,
) -> Status {
    let mut sweep = tokio::time::interval((deadline / 4).min(Duration::from_secs(1)));
    let mut senders_left = true;
    loop {
        if !senders_left && in_flight.is_empty() {
            return Status::cancelled("the member is stopping");
        }
        tokio::select! {
            queued = rx.recv(), if senders_left && in_flight.len() < MAX_IN_FLIGHT => match queued {
                Some(q) => {
                    let sent = send(q, rx, in_flight);
                    if !sent {
                        return Status::unavailable("the request half of the stream closed");
                    }
                }
                // Every sender is gone (the backend was dropped): nothing more to send; the
                // writes in flight are still answered.
                None => senders_left = false,
            },
            answers = inbound.message() => match answers {
                Ok(Some(batch)) => {
                    for result in batch.results {
                        if let Some(w) = in_flight.remove(&result.id) {
                            let _ = w.reply.send(Reply::Done(answer_of(result.outcome)));
                        }
                    }
                }
                Ok(None) => return Status::unavailable("the leader closed the stream"),
                Err(status) => return status,
            },
            _ = sweep.tick() => {
                let now = Instant::now();
                let late: Vec<u64> = in_flight
                    .iter()
                    .filter(|(_, w)| now.duration_since(w.sent) >= deadline)
                    .map(|(id, _)| *id)
                    .collect();
                for id in late {
                    if let Some(w) = in_flight.remove(&id) {
                        let _ = w.reply.send(Reply::Done((
                            Err(BackendError::Timeout(format!(
                                "the leader did not answer a forwarded write within \
                                 {deadline:?}; it may or may not have been applied"
                            ))),
                            String::new(),
                        )));
                    }
                }
            }
        }
    }
}

/// Every write in flight gets the stream's failure: outcome unknown.
fn fail_all(in_flight: &mut HashMap<u64, InFlight>, status: &Status) {
    for (_, w) in in_flight.drain() {
        let _ = w
            .reply
            .send(Reply::Done((Err(from_status(status)), String::new())));
    }
}

/// The error for a failed forwarded write. The leader's own refusals (its `BackendError`s,
/// whose messages start with `etcdserver:`) keep their meaning; anything else is a transport
/// failure after which the write may or may not have been applied, so it is reported as an
/// unknown outcome, never as "retry elsewhere".
pub(crate) fn from_status(status: &Status) -> BackendError {
    let msg = status.message().to_string();
    if !msg.starts_with("etcdserver:") {
        return BackendError::Timeout(format!("forwarding to the leader failed: {msg}"));
    }
    // The leader's own refusal, worded for the client already: passed on as it is (wrapping
    // it again doubled the "etcdserver:" prefix).
    BackendError::Forwarded {
        code: status.code(),
        message: msg,
    }
}

fn answer_of(outcome: Option<forward_result::Outcome>) -> Answered {
    match outcome {
        Some(forward_result::Outcome::Response(response)) => (Ok(response), String::new()),
        Some(forward_result::Outcome::Failure(f)) => (
            Err(from_status(&Status::new(
                tonic::Code::from(f.code),
                f.message,
            ))),
            f.kind,
        ),
        None => (
            Err(BackendError::Timeout(
                "the leader's answer to a forwarded write was empty; the write may or may not \
                 have been applied"
                    .into(),
            )),
            String::new(),
        ),
    }
}

/// What the leader does with one forwarded write: `(id, command, trace context)` to its
/// answer. Implemented by the backend (checks the command, proposes it).
pub(crate) trait ProposeForwarded: Send + Sync + 'static {
    /// Proposes one forwarded write from member `from` (in its `session`, if any). A
    /// session's refusal carries its kind in the status's [`FORWARD_KIND`] metadata.
    fn propose_forwarded(
        &self,
        from: NodeId,
        command: Bytes,
        trace: BTreeMap<String, String>,
        session: Option<ForwardSession>,
    ) -> impl Future<Output = Result<Bytes, Status>> + Send;
}

/// The leader side of a stream whose first message is `first` and whose credentials were
/// checked against it by `authorize` (called again for every later message, with its
/// sender, so a member removed meanwhile is cut off). The answers stream.
///
/// One task serves the stream: it reads the follower's messages, drives every write's
/// proposal as a future of its own set (at most [`MAX_IN_FLIGHT`] at a time), and sends the
/// answers that are ready together as one message. A task per write, and a second task
/// batching their answers from a channel, cost a spawn and two wake-ups per forwarded write
/// (docs/benchmarks.md, 2026-12-07 18:19). While the follower does not read the answers, the
/// task waits to send them and reads nothing more: the follower's writes stall instead of
/// queueing answers without bound.
pub(crate) fn serve<P: ProposeForwarded>(
    proposer: P,
    first: ForwardBatch,
    inbound: Streaming<ForwardBatch>,
    authorize: impl Fn(NodeId) -> Result<(), Status> + Send + 'static,
) -> ReceiverStream<Result<ForwardReplyBatch, Status>> {
    let (out_tx, out_rx) = mpsc::channel::<Result<ForwardReplyBatch, Status>>(64);
    tokio::spawn(serve_stream(proposer, first, inbound, authorize, out_tx));
    ReceiverStream::new(out_rx)
}

/// The task of [`serve`].
async fn serve_stream<P: ProposeForwarded>(
    proposer: P,
    first: ForwardBatch,
    mut inbound: impl futures_util::Stream<Item = Result<ForwardBatch, Status>> + Unpin,
    authorize: impl Fn(NodeId) -> Result<(), Status>,
    out_tx: mpsc::Sender<Result<ForwardReplyBatch, Status>>,
) {
    let from = first.from;
    let proposer = &proposer;
    let propose = |item: ForwardItem| async move {
        let outcome = match proposer
            .propose_forwarded(from, item.command, item.trace, item.session)
            .await
        {
            Ok(response) => forward_result::Outcome::Response(response),
            Err(status) => forward_result::Outcome::Failure(ForwardFailure {
                code: status.code() as i32,
                message: status.message().to_string(),
                kind: status
                    .metadata()
                    .get(FORWARD_KIND)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
            }),
        };
        ForwardResult {
            id: item.id,
            outcome: Some(outcome),
        }
    };
    let mut pending = FuturesUnordered::new();
    // Items of a message not proposed yet: taken in as room frees up.
    let mut waiting: std::vec::IntoIter<ForwardItem> = Vec::new().into_iter();
    let mut next = Some(first);
    // Whether the follower may still send (false once its half ended, broke or was refused,
    // or its answers' stream is gone).
    let mut reading = true;
    loop {
        if let Some(b) = next.take() {
            if b.from != from {
                let _ = out_tx
                    .send(Err(Status::permission_denied(format!(
                        "a forwarding stream opened by member {from} carried a message from \
                         member {}",
                        b.from
                    ))))
                    .await;
                reading = false;
            } else if let Err(status) = authorize(from) {
                let _ = out_tx.send(Err(status)).await;
                reading = false;
            } else {
                waiting = b.items.into_iter();
            }
        }
        while pending.len() < MAX_IN_FLIGHT {
            let Some(item) = waiting.next() else { break };
            pending.push(propose(item));
        }
        let room = pending.len() < MAX_IN_FLIGHT && waiting.len() == 0;
        if !reading && pending.is_empty() && waiting.len() == 0 {
            // The follower closed its half (or broke it, or was refused) and every write it
            // sent is answered: the answers' stream ends.
            return;
        }
        tokio::select! {
            results = ready_results(&mut pending), if !pending.is_empty() => {
                // Once the answers' stream is gone every send fails at once: the writes in
                // flight are still driven to their end, their answers dropped.
                if out_tx.send(Ok(ForwardReplyBatch { results })).await.is_err() {
                    reading = false;
                }
            }
            message = inbound.next(), if reading && room => match message {
                Some(Ok(b)) => next = Some(b),
                // The follower closed its half (or broke it): the writes still in flight are
                // answered as they complete.
                None | Some(Err(_)) => reading = false,
            },
            // Not reached: with nothing in flight and nothing to read the loop returned above.
            else => return,
        }
    }
}

/// The answers of the writes in `pending` that are ready, at least one (`pending` is not
/// empty) and at most [`MAX_BATCH`].
async fn ready_results<F: Future<Output = ForwardResult>>(
    pending: &mut FuturesUnordered<F>,
) -> Vec<ForwardResult> {
    std::future::poll_fn(|cx| {
        let mut results = Vec::new();
        while results.len() < MAX_BATCH {
            match pending.poll_next_unpin(cx) {
                Poll::Ready(Some(result)) => results.push(result),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if results.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(results)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::dengine::kv::v1::forward_server::{Forward, ForwardServer};
    use crate::proto::dengine::kv::v1::{ForwardReply, ForwardRequest, InfoReply, InfoRequest};
    use dengine_net_grpc::GrpcConfig;
    use tonic::{Request, Response};

    /// How the fake leader treats a stream.
    #[derive(Clone, Copy)]
    enum Leader {
        /// Answers every write with its command reversed, all of a message's answers in one
        /// message, in reverse order.
        Echo,
        /// Has no stream call (a member of an older version).
        NoStream,
        /// Reads the first message, then breaks the stream without answering.
        Breaks,
        /// Keeps the stream open and never answers.
        Silent,
    }

    #[derive(Clone)]
    struct Fake(Leader);

    fn reversed(b: &[u8]) -> Bytes {
        b.iter().rev().copied().collect::<Vec<u8>>().into()
    }

    #[tonic::async_trait]
    impl Forward for Fake {
        async fn propose(
            &self,
            request: Request<ForwardRequest>,
        ) -> Result<Response<ForwardReply>, Status> {
            Ok(Response::new(ForwardReply {
                response: reversed(&request.into_inner().command),
            }))
        }

        type ProposeStreamStream = ReceiverStream<Result<ForwardReplyBatch, Status>>;

        async fn propose_stream(
            &self,
            request: Request<Streaming<ForwardBatch>>,
        ) -> Result<Response<Self::ProposeStreamStream>, Status> {
            let mut inbound = request.into_inner();
            let (tx, rx) = mpsc::channel(16);
            match self.0 {
                Leader::NoStream => return Err(Status::unimplemented("no such method")),
                Leader::Breaks => {
                    let _ = inbound.message().await;
                    tx.send(Err(Status::internal("the leader crashed")))
                        .await
                        .unwrap();
                }
                Leader::Silent => {
                    tokio::spawn(async move {
                        while let Ok(Some(_)) = inbound.message().await {}
                        drop(tx);
                    });
                }
                Leader::Echo => {
                    tokio::spawn(async move {
                        while let Ok(Some(batch)) = inbound.message().await {
                            let results = batch
                                .items
                                .iter()
                                .rev()
                                .map(|i| ForwardResult {
                                    id: i.id,
                                    outcome: Some(forward_result::Outcome::Response(reversed(
                                        &i.command,
                                    ))),
                                })
                                .collect();
                            if tx.send(Ok(ForwardReplyBatch { results })).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
            Ok(Response::new(ReceiverStream::new(rx)))
        }

        async fn info(
            &self,
            _request: Request<InfoRequest>,
        ) -> Result<Response<InfoReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn change_members(
            &self,
            _request: Request<crate::proto::dengine::kv::v1::MembershipRequest>,
        ) -> Result<Response<crate::proto::dengine::kv::v1::MembershipReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn lease_at_leader(
            &self,
            _request: Request<crate::proto::dengine::kv::v1::LeaseAtLeaderRequest>,
        ) -> Result<Response<crate::proto::dengine::kv::v1::LeaseAtLeaderReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn open_session(
            &self,
            _request: Request<crate::proto::dengine::kv::v1::OpenSessionRequest>,
        ) -> Result<Response<crate::proto::dengine::kv::v1::OpenSessionReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    /// A fake leader on a free loopback port, and a way to reach it.
    async fn leader(
        kind: Leader,
    ) -> (
        String,
        impl Fn() -> Result<Link, BackendError> + Clone + Send + 'static,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ForwardServer::new(Fake(kind)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let transport = GrpcTransport::new(GrpcConfig {
            id: 2,
            ..GrpcConfig::default()
        })
        .unwrap();
        let at = address.clone();
        let link = move || {
            Ok(Link {
                address: at.clone(),
                channel: transport.peer_channel(&at).unwrap(),
                transport: transport.clone(),
                from: 2,
            })
        };
        (address, link)
    }

    #[tokio::test]
    async fn each_write_gets_its_own_answer_whatever_the_order() {
        let (address, link) = leader(Leader::Echo).await;
        let streams = Arc::new(ForwardStreams::default());
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..50u32 {
            let (streams, address, link) = (Arc::clone(&streams), address.clone(), link.clone());
            writes.spawn(async move {
                let command = Bytes::from(format!("write {i}"));
                let answer = streams
                    .forward(link, &address, command.clone(), Vec::new(), None)
                    .await
                    .unwrap()
                    .0
                    .unwrap();
                assert_eq!(answer, reversed(&command));
            });
        }
        while let Some(done) = writes.join_next().await {
            done.unwrap();
        }
        // One stream carried them: one queue for the address.
        assert_eq!(streams.queues.lock().len(), 1);
        assert!(!streams.is_unary_only(&address));
    }

    #[tokio::test]
    async fn a_leader_without_the_stream_is_asked_one_call_per_write() {
        let (address, link) = leader(Leader::NoStream).await;
        let streams = Arc::new(ForwardStreams::default());
        let first = streams
            .forward(&link, &address, Bytes::from_static(b"a"), Vec::new(), None)
            .await;
        assert!(matches!(first, Err(Unsupported)));
        assert!(streams.is_unary_only(&address));
    }

    #[tokio::test]
    async fn a_write_in_flight_when_the_stream_breaks_has_an_unknown_outcome() {
        let (address, link) = leader(Leader::Breaks).await;
        let streams = Arc::new(ForwardStreams::default());
        let answer = streams
            .forward(&link, &address, Bytes::from_static(b"a"), Vec::new(), None)
            .await
            .unwrap()
            .0;
        match answer {
            Err(BackendError::Timeout(why)) => assert!(why.contains("crashed"), "{why}"),
            other => panic!("expected an unknown outcome, got {other:?}"),
        }
        // The next write opens a new stream (which breaks the same way).
        let again = streams
            .forward(&link, &address, Bytes::from_static(b"b"), Vec::new(), None)
            .await
            .unwrap()
            .0;
        assert!(matches!(again, Err(BackendError::Timeout(_))), "{again:?}");
    }

    #[tokio::test]
    async fn a_write_the_leader_never_answers_times_out_with_an_unknown_outcome() {
        let (address, link) = leader(Leader::Silent).await;
        let streams = Arc::new(ForwardStreams {
            deadline: Duration::from_millis(300),
            ..ForwardStreams::default()
        });
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            streams.forward(&link, &address, Bytes::from_static(b"a"), Vec::new(), None),
        )
        .await
        .expect("an answer within the deadline")
        .unwrap()
        .0;
        match answer {
            Err(BackendError::Timeout(why)) => {
                assert!(why.contains("may or may not"), "{why}");
            }
            other => panic!("expected an unknown outcome, got {other:?}"),
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }

    #[test]
    fn a_leaders_refusal_is_passed_on_as_it_came() {
        let leader = BackendError::Timeout("no commit within 5s".into()).to_status();
        let passed = from_status(&leader).to_status();
        assert_eq!(passed.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(passed.message(), leader.message());
        assert_eq!(passed.message().matches("etcdserver:").count(), 1);
        // A transport failure (no etcd message) is an unknown outcome, said so.
        let broken = from_status(&Status::unavailable("connection reset"));
        assert!(matches!(broken, BackendError::Timeout(_)), "{broken}");
    }

    /// A leader whose proposals finish when the test says so: each write's command names it,
    /// and it is answered with its command reversed once released.
    #[derive(Clone, Default)]
    struct Gated {
        /// Writes proposed and not yet finished, by command.
        open: Arc<Mutex<HashMap<Bytes, oneshot::Sender<()>>>>,
        /// Writes whose proposal ran to its end, answered or not.
        finished: Arc<Mutex<Vec<Bytes>>>,
        /// Member 2 was removed: its credentials are refused from now on.
        removed: Arc<std::sync::atomic::AtomicBool>,
    }

    impl ProposeForwarded for Gated {
        async fn propose_forwarded(
            &self,
            _from: NodeId,
            command: Bytes,
            _trace: BTreeMap<String, String>,
            _session: Option<ForwardSession>,
        ) -> Result<Bytes, Status> {
            let (tx, rx) = oneshot::channel();
            self.open.lock().insert(command.clone(), tx);
            let _ = rx.await;
            self.finished.lock().push(command.clone());
            Ok(reversed(&command))
        }
    }

    impl Gated {
        /// Waits until the proposal of `command` has started.
        async fn proposed(&self, command: &[u8]) {
            for _ in 0..500 {
                if self.open.lock().contains_key(command) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            panic!("the write {command:?} was never proposed");
        }

        /// Finishes the proposal of `command` once it has started.
        async fn release(&self, command: &[u8]) {
            self.proposed(command).await;
            let tx = self.open.lock().remove(command);
            let _ = tx.expect("proposed").send(());
        }

        fn open_count(&self) -> usize {
            self.open.lock().len()
        }
    }

    fn batch(from: NodeId, ids: std::ops::RangeInclusive<u64>) -> ForwardBatch {
        ForwardBatch {
            from,
            items: ids
                .map(|id| ForwardItem {
                    id,
                    command: Bytes::from(format!("w{id}")),
                    trace: BTreeMap::new(),
                    session: None,
                })
                .collect(),
        }
    }

    /// What the follower sends on a stream after its first message.
    type FollowerHalf = mpsc::UnboundedSender<Result<ForwardBatch, Status>>;
    /// The leader's answers on a stream.
    type AnswersHalf = mpsc::Receiver<Result<ForwardReplyBatch, Status>>;

    /// Starts the leader side of a stream opened by member 2 with `first`; the follower's
    /// further messages go on the returned sender, the answers come on the receiver.
    fn serve_gated(gated: &Gated, first: ForwardBatch) -> (FollowerHalf, AnswersHalf) {
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(64);
        let removed = Arc::clone(&gated.removed);
        tokio::spawn(serve_stream(
            gated.clone(),
            first,
            UnboundedReceiverStream::new(in_rx),
            move |from| {
                if from == 2 && !removed.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(Status::permission_denied("not a member"))
                }
            },
            out_tx,
        ));
        (in_tx, out_rx)
    }

    async fn next_answers(out: &mut AnswersHalf) -> Option<Result<ForwardReplyBatch, Status>> {
        tokio::time::timeout(Duration::from_secs(5), out.recv())
            .await
            .expect("the leader side answered or ended within 5 s")
    }

    fn answered(results: &[ForwardResult]) -> Vec<(u64, Bytes)> {
        results
            .iter()
            .map(|r| match &r.outcome {
                Some(forward_result::Outcome::Response(b)) => (r.id, b.clone()),
                other => panic!("write {} was not answered: {other:?}", r.id),
            })
            .collect()
    }

    #[tokio::test]
    async fn the_leader_answers_each_write_as_it_commits_and_ready_answers_together() {
        let gated = Gated::default();
        let (in_tx, mut out) = serve_gated(&gated, batch(2, 1..=3));
        // The second write finishes first: its answer does not wait for the first's.
        gated.release(b"w2").await;
        let first = next_answers(&mut out).await.unwrap().unwrap();
        assert_eq!(answered(&first.results), vec![(2, reversed(b"w2"))]);
        // Writes of a later message are proposed while earlier ones are still open.
        in_tx.send(Ok(batch(2, 4..=4))).unwrap();
        gated.release(b"w4").await;
        let second = next_answers(&mut out).await.unwrap().unwrap();
        assert_eq!(answered(&second.results), vec![(4, reversed(b"w4"))]);
        // Two that finish while the task is busy elsewhere leave as one message.
        let gates: Vec<_> = {
            let mut open = gated.open.lock();
            [&b"w1"[..], &b"w3"[..]]
                .iter()
                .map(|c| open.remove(*c).unwrap())
                .collect()
        };
        // (A test's runtime has one thread: both are released before the task runs again.)
        for gate in gates {
            gate.send(()).unwrap();
        }
        let together = next_answers(&mut out).await.unwrap().unwrap();
        let mut ids: Vec<u64> = answered(&together.results)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 3]);
        // The follower closes its half with nothing in flight: the answers' stream ends.
        drop(in_tx);
        assert!(next_answers(&mut out).await.is_none());
    }

    #[tokio::test]
    async fn the_leader_proposes_at_most_max_in_flight_writes_of_one_stream_at_once() {
        let gated = Gated::default();
        let total = MAX_IN_FLIGHT as u64 + 10;
        let (in_tx, mut out) = serve_gated(&gated, batch(2, 1..=total));
        for _ in 0..500 {
            if gated.open_count() == MAX_IN_FLIGHT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            gated.open_count(),
            MAX_IN_FLIGHT,
            "proposed beyond the bound"
        );
        // One finishes: one more of the waiting ones is proposed, and so on to the last.
        gated.release(b"w1").await;
        gated
            .release(&Bytes::from(format!("w{}", MAX_IN_FLIGHT + 1)))
            .await;
        let mut answers = 0;
        while answers < 2 {
            answers += next_answers(&mut out).await.unwrap().unwrap().results.len();
        }
        for id in 2..=total {
            if id != MAX_IN_FLIGHT as u64 + 1 {
                gated.release(&Bytes::from(format!("w{id}"))).await;
            }
        }
        while answers < total as usize {
            answers += next_answers(&mut out).await.unwrap().unwrap().results.len();
        }
        assert_eq!(answers, total as usize);
        drop(in_tx);
        assert!(next_answers(&mut out).await.is_none());
    }

    #[tokio::test]
    async fn a_message_from_another_member_is_refused_and_the_writes_in_flight_still_end() {
        let gated = Gated::default();
        let (in_tx, mut out) = serve_gated(&gated, batch(2, 1..=1));
        in_tx.send(Ok(batch(3, 2..=2))).unwrap();
        let refused = next_answers(&mut out).await.unwrap().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("member 3"),
            "{}",
            refused.message()
        );
        // Nothing of the other member's message is proposed; the first write still ends.
        gated.release(b"w1").await;
        let m = next_answers(&mut out).await.unwrap().unwrap();
        assert_eq!(answered(&m.results), vec![(1, reversed(b"w1"))]);
        assert!(next_answers(&mut out).await.is_none());
        assert_eq!(*gated.finished.lock(), vec![Bytes::from_static(b"w1")]);
    }

    #[tokio::test]
    async fn a_member_removed_meanwhile_is_cut_off_and_its_writes_in_flight_still_end() {
        let gated = Gated::default();
        let (in_tx, mut out) = serve_gated(&gated, batch(2, 1..=1));
        gated.release(b"w1").await;
        let m = next_answers(&mut out).await.unwrap().unwrap();
        assert_eq!(answered(&m.results), vec![(1, reversed(b"w1"))]);
        // A write in flight when the member is removed, then a message after it.
        in_tx.send(Ok(batch(2, 2..=2))).unwrap();
        gated.proposed(b"w2").await;
        gated
            .removed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        in_tx.send(Ok(batch(2, 3..=3))).unwrap();
        let refused = next_answers(&mut out).await.unwrap().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        // Nothing of the refused message is proposed; the write in flight still ends.
        gated.release(b"w2").await;
        let m = next_answers(&mut out).await.unwrap().unwrap();
        assert_eq!(answered(&m.results), vec![(2, reversed(b"w2"))]);
        assert!(next_answers(&mut out).await.is_none());
        assert_eq!(
            *gated.finished.lock(),
            vec![Bytes::from_static(b"w1"), Bytes::from_static(b"w2")]
        );
    }

    #[tokio::test]
    async fn writes_in_flight_are_driven_to_their_end_when_nobody_reads_the_answers() {
        let gated = Gated::default();
        let (in_tx, out) = serve_gated(&gated, batch(2, 1..=2));
        gated.release(b"w1").await;
        // The follower's stream is gone: its answers cannot be sent, but the proposal of the
        // write still open is not abandoned half-way.
        drop(out);
        drop(in_tx);
        gated.release(b"w2").await;
        for _ in 0..500 {
            if gated.finished.lock().len() == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("finished: {:?}", gated.finished.lock());
    }
}
