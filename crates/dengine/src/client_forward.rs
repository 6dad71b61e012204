//! Client requests that a follower forwards to the leader, for callers that set `forward`
//! in their request (`proto/dengine/client/v1/forward.proto`).
//!
//! The follower side is [`Forwarder`]: one task per leader address owns one long-lived
//! stream to that leader's peer listener and the requests in flight on it; the requests
//! queued while the previous message was in flight travel as one message. The leader side is
//! [`ForwardService`]: it checks the sender's peer credentials, runs every request of the
//! stream as its own client service would (at most [`MAX_IN_FLIGHT`] at a time), never
//! forwards one again, and sends the answers back as they complete, batched too.
//!
//! What the follower answers its client, so that the client knows whether the command may
//! have been applied (the kinds of `client.proto`):
//! * the leader's reply, or its refusal exactly as the leader's client service sent it
//!   (a leader that lost its leadership meanwhile refuses with `not-leader`);
//! * `retry` for a request that never left the follower (the stream could not be opened,
//!   or broke before the request was sent): it was not applied;
//! * `unknown-outcome` for a request that was sent and not answered (the stream broke, or
//!   no answer within [`FORWARD_DEADLINE`]): it may have been applied;
//! * `not-leader` with the leader's id when the leader serves no forwarding (an older
//!   version): nothing was proposed, and the client goes to the leader itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use dengine_core::NodeId;
use dengine_net_grpc::GrpcTransport;
use dengine_net_grpc::client_pb::forward_client::ForwardClient;
use dengine_net_grpc::client_pb::forward_server::{Forward, ForwardServer};
use dengine_net_grpc::client_pb::{
    ForwardAnswer, ForwardAnswers, ForwardBatch, ForwardCall, ForwardRefusal, forward_answer,
    forward_call,
};
use dengine_net_grpc::tonic::{Code, Request, Response, Status, Streaming};
use dengine_node::{Node, ProposeError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};

use crate::client_status::{
    ERROR_KIND, LEADER_ID, metadata_text, propose_status, refusal, status_of,
};

/// How long a follower waits for the leader's answer to a forwarded request before
/// answering `unknown-outcome`. The leader answers sooner on its own (its
/// `client.propose_timeout_ms`, 5 s by default); this bounds the wait on a leader that stopped
/// answering altogether (a paused process, a black-holed connection).
pub(crate) const FORWARD_DEADLINE: Duration = Duration::from_secs(15);

/// Requests in flight on one stream, on either side: the follower stops taking requests
/// from its queue, and the leader stops reading the stream, at this many.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// Requests per message, on either side.
const MAX_BATCH: usize = 256;

/// A message's commands stop growing past this many bytes (one larger command still goes,
/// alone). The leader's decoding limit is the largest request plus this.
pub(crate) const BATCH_BYTES: usize = 1 << 20;

/// What a forwarded request comes back as: the reply's outcome (never a refusal), or the
/// status for the client.
pub(crate) type Answer = Result<forward_answer::Outcome, Status>;

/// A request waiting in a stream's queue.
struct Queued {
    call: forward_call::Call,
    reply: oneshot::Sender<Answer>,
}

/// The follower side: one stream task per leader address, started on the first request to
/// it and again after its stream ended.
pub(crate) struct Forwarder {
    transport: GrpcTransport,
    /// This member, named in every message (the leader checks it against the credentials).
    from: NodeId,
    /// The largest message the leader may send back.
    max_message_bytes: usize,
    queues: Mutex<HashMap<String, mpsc::Sender<Queued>>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Forwards through `transport` (its peer TLS and credentials) as member `from`.
    pub(crate) fn new(transport: GrpcTransport, from: NodeId, max_message_bytes: usize) -> Self {
        Forwarder {
            transport,
            from,
            max_message_bytes,
            queues: Mutex::default(),
        }
    }

    /// Sends `call` to the leader `leader` at peer address `address` and waits for its
    /// answer.
    pub(crate) async fn forward(
        self: &Arc<Self>,
        leader: NodeId,
        address: &str,
        call: forward_call::Call,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        // Looked up and started under one lock: concurrent first requests share one stream.
        let queue = {
            let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
            match queues.get(address) {
                Some(queue) if !queue.is_closed() => queue.clone(),
                _ => {
                    let channel = self
                        .transport
                        .peer_channel(address)
                        .map_err(|e| not_sent(&format!("the leader's address {address:?}: {e}")))?;
                    let queue = self.start(Link {
                        leader,
                        address: address.to_string(),
                        client: ForwardClient::new(channel)
                            .max_decoding_message_size(self.max_message_bytes)
                            .max_encoding_message_size(self.max_message_bytes),
                    });
                    queues.insert(address.to_string(), queue.clone());
                    queue
                }
            }
        };
        if queue.send(Queued { call, reply }).await.is_err() {
            return Err(not_sent("the stream to the leader closed"));
        }
        answer.await.unwrap_or_else(|_| {
            Err(unknown(
                "the forwarding task ended before the leader answered",
            ))
        })
    }

    /// Starts the task of a stream to `link.address`; returns its queue.
    fn start(self: &Arc<Self>, link: Link) -> mpsc::Sender<Queued> {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        // Weak: the queue's senders live in `queues`, and the task ends when they are gone.
        let forwarder = Arc::downgrade(self);
        let transport = self.transport.clone();
        let from = self.from;
        tokio::spawn(async move {
            let address = link.address.clone();
            run_stream(link, rx, transport, from).await;
            forget(&forwarder, &address);
        });
        tx
    }
}

/// Removes a finished stream's queue, unless a new one took its place.
fn forget(forwarder: &Weak<Forwarder>, address: &str) {
    if let Some(forwarder) = forwarder.upgrade() {
        let mut queues = forwarder
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if queues.get(address).is_some_and(mpsc::Sender::is_closed) {
            queues.remove(address);
        }
    }
}

/// Where a stream task sends.
struct Link {
    leader: NodeId,
    address: String,
    client: ForwardClient<dengine_net_grpc::tonic::transport::Channel>,
}

/// `retry`: the request never reached the leader.
fn not_sent(why: &str) -> Status {
    refusal(
        Code::Unavailable,
        "retry",
        None,
        format!("{why}; the request was not forwarded (not applied): retry"),
    )
}

/// `unknown-outcome`: the request reached the leader, or may have.
fn unknown(why: &str) -> Status {
    refusal(
        Code::Unavailable,
        "unknown-outcome",
        None,
        format!("{why}; the forwarded request may or may not have been applied"),
    )
}

/// The requests sent on one stream and waiting for their answers.
struct InFlight {
    next_id: u64,
    waiting: HashMap<u64, (Instant, oneshot::Sender<Answer>)>,
}

impl InFlight {
    /// Sends `first` and whatever else is queued already (up to a message's bounds) as one
    /// message; false when the stream's request half is gone.
    fn send(
        &mut self,
        first: Queued,
        rx: &mut mpsc::Receiver<Queued>,
        out: &mpsc::UnboundedSender<ForwardBatch>,
        from: NodeId,
    ) -> bool {
        let mut calls = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(q) = next.take() {
            self.next_id += 1;
            bytes += call_bytes(&q.call);
            calls.push(ForwardCall {
                id: self.next_id,
                call: Some(q.call),
            });
            self.waiting.insert(self.next_id, (Instant::now(), q.reply));
            if calls.len() < MAX_BATCH && bytes < BATCH_BYTES && self.waiting.len() < MAX_IN_FLIGHT
            {
                next = rx.try_recv().ok();
            }
        }
        // Unbounded, but never more than MAX_IN_FLIGHT requests deep.
        out.send(ForwardBatch { from, calls }).is_ok()
    }

    fn answer(&mut self, answer: ForwardAnswer) {
        if let Some((_, reply)) = self.waiting.remove(&answer.id) {
            let _ = reply.send(answer_of(answer.outcome));
        }
    }

    /// Answers every request sent more than [`FORWARD_DEADLINE`] ago.
    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (sent, _))| now.duration_since(*sent) >= FORWARD_DEADLINE)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some((_, reply)) = self.waiting.remove(&id) {
                let _ = reply.send(Err(unknown(&format!(
                    "the leader did not answer within {FORWARD_DEADLINE:?}"
                ))));
            }
        }
    }

    /// Every request in flight gets `status`.
    fn fail_all(&mut self, status: &Status) {
        for (_, (_, reply)) in self.waiting.drain() {
            let _ = reply.send(Err(status.clone()));
        }
    }
}

/// About how many bytes a call takes in a message.
fn call_bytes(call: &forward_call::Call) -> usize {
    match call {
        forward_call::Call::Propose(r) => r.command.len() + 32,
        _ => 16,
    }
}

/// The follower's answer for what the leader sent back.
fn answer_of(outcome: Option<forward_answer::Outcome>) -> Answer {
    match outcome {
        Some(forward_answer::Outcome::Refusal(r)) => Err(status_of(
            Code::from(r.code),
            &r.kind,
            (r.leader != 0).then_some(r.leader),
            r.message,
        )),
        Some(outcome) => Ok(outcome),
        None => Err(unknown("the leader's answer was empty")),
    }
}

/// Whether a failure to open the stream happened before the request left: the connection
/// could not be made.
fn never_connected(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(e) = source {
        let text = e.to_string();
        if text.contains("connect error")
            || text.contains("Connection refused")
            || text.contains("error trying to connect")
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Owns one stream to a leader until it breaks or every sender is gone; then answers what
/// is left.
async fn run_stream(
    mut link: Link,
    mut rx: mpsc::Receiver<Queued>,
    transport: GrpcTransport,
    from: NodeId,
) {
    let Some(first) = rx.recv().await else {
        return;
    };
    let (out, out_rx) = mpsc::unbounded_channel::<ForwardBatch>();
    let mut flight = InFlight {
        next_id: 0,
        waiting: HashMap::new(),
    };
    // The leader answers the call once it has read the first message (it checks the
    // sender's credentials against it), so that message goes out before the call is awaited.
    flight.send(first, &mut rx, &out, from);
    let call = link
        .client
        .stream(transport.peer_request(UnboundedReceiverStream::new(out_rx)));
    let ended = match tokio::time::timeout(FORWARD_DEADLINE, call).await {
        Ok(Ok(response)) => pump(response.into_inner(), &mut rx, &mut flight, &out, from).await,
        Ok(Err(status)) if status.code() == Code::Unimplemented => {
            // Nothing was proposed: the client goes to the leader itself.
            refusal(
                Code::FailedPrecondition,
                "not-leader",
                Some(link.leader),
                format!(
                    "member {} is the leader and does not take forwarded requests; send the \
                     request there",
                    link.leader
                ),
            )
        }
        Ok(Err(status)) if never_connected(&status) => not_sent(&format!(
            "the leader at {} could not be reached: {}",
            link.address,
            status.message()
        )),
        Ok(Err(status)) => unknown(&format!(
            "forwarding to the leader at {} failed: {}",
            link.address,
            status.message()
        )),
        Err(_) => unknown(&format!(
            "the leader at {} did not answer within {FORWARD_DEADLINE:?}",
            link.address
        )),
    };
    tracing::debug!(leader = link.leader, address = %link.address, reason = %ended.message(),
        "forwarding stream ended");
    flight.fail_all(&ended);
    // Queued requests were never sent: not applied, safe to retry.
    rx.close();
    while let Ok(q) = rx.try_recv() {
        let _ = q
            .reply
            .send(Err(not_sent("the stream to the leader ended")));
    }
}

/// Moves requests from the queue to the stream and answers from the stream to their
/// callers, until the stream ends (the returned status says why, as an unknown outcome for
/// the requests in flight) or every sender is gone and nothing is in flight.
async fn pump(
    mut inbound: Streaming<ForwardAnswers>,
    rx: &mut mpsc::Receiver<Queued>,
    flight: &mut InFlight,
    out: &mpsc::UnboundedSender<ForwardBatch>,
    from: NodeId,
) -> Status {
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut senders_left = true;
    loop {
        if !senders_left && flight.waiting.is_empty() {
            return Status::cancelled("the member is stopping");
        }
        tokio::select! {
            queued = rx.recv(), if senders_left && flight.waiting.len() < MAX_IN_FLIGHT => {
                match queued {
                    Some(q) => {
                        if !flight.send(q, rx, out, from) {
                            return unknown("the stream's request half closed");
                        }
                    }
                    None => senders_left = false,
                }
            }
            answers = inbound.message() => match answers {
                Ok(Some(batch)) => {
                    for answer in batch.answers {
                        flight.answer(answer);
                    }
                }
                Ok(None) => return unknown("the leader closed the forwarding stream"),
                Err(status) => {
                    return unknown(&format!("the forwarding stream broke: {}", status.message()));
                }
            },
            _ = sweep.tick() => flight.expire(),
        }
    }
}

/// The leader side: `dengine.client.v1.Forward`, served on the peer listener by
/// [`start`](crate::start) (an application serving its own API adds it with
/// [`ForwardService::server`] if it serves [`ClientService`](crate::ClientService) with
/// forwarding).
#[derive(Clone, Debug)]
pub struct ForwardService {
    node: Node,
    transport: GrpcTransport,
    max_message_bytes: usize,
}

impl ForwardService {
    /// Runs forwarded requests on `node` (as if a client had sent them to it, never
    /// forwarding them again), from members whose peer credentials `transport` accepts;
    /// commands of up to `max_request_bytes` (as [`ClientService::new`](crate::ClientService::new)).
    pub fn new(node: Node, transport: GrpcTransport, max_request_bytes: usize) -> Self {
        ForwardService {
            node,
            transport,
            max_message_bytes: max_request_bytes.saturating_add(BATCH_BYTES),
        }
    }

    /// The tonic service, for the peer listener's routes.
    pub fn server(self) -> ForwardServer<ForwardService> {
        let max = self.max_message_bytes;
        ForwardServer::new(self).max_decoding_message_size(max)
    }
}

/// Runs one client request on `node` itself: what the client service does with a request it
/// does not forward, and what the leader does with a forwarded one.
pub(crate) async fn run_locally(
    node: &Node,
    call: forward_call::Call,
) -> Result<forward_answer::Outcome, ProposeError> {
    use forward_answer::Outcome;
    match call {
        forward_call::Call::Propose(r) => if r.session == 0 {
            node.propose(r.command).await
        } else {
            node.propose_in_session(r.session, r.seq, r.first_unanswered, r.command)
                .await
        }
        .map(Outcome::Response),
        forward_call::Call::OpenSession(_) => node.open_session().await.map(Outcome::Session),
        forward_call::Call::KeepSessionAlive(r) => node
            .keep_session_alive(r.session)
            .await
            .map(|()| Outcome::Response(Bytes::new())),
        forward_call::Call::CloseSession(r) => node
            .close_session(r.session)
            .await
            .map(|()| Outcome::Response(Bytes::new())),
    }
}

/// The refusal a follower passes on, from the leader's status.
fn refusal_of(status: &Status) -> ForwardRefusal {
    let meta = |key: &str| metadata_text(status, key);
    ForwardRefusal {
        code: status.code() as i32,
        kind: meta(ERROR_KIND).unwrap_or_else(|| "unknown-outcome".to_string()),
        leader: meta(LEADER_ID)
            .and_then(|l| l.parse().ok())
            .unwrap_or_default(),
        message: status.message().to_string(),
    }
}

#[dengine_net_grpc::tonic::async_trait]
impl Forward for ForwardService {
    type StreamStream = ReceiverStream<Result<ForwardAnswers, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<ForwardBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("a forwarding stream must start with a message")
        })?;
        // The credentials travel with the stream's headers; they are checked against the
        // first message's sender now and against every later message's as it arrives, so a
        // member removed meanwhile is cut off.
        let credentials = Request::from_parts(metadata, extensions, ());
        self.transport.authorize_peer(&credentials, first.from)?;
        let from = first.from;
        let (out, out_rx) = mpsc::channel::<Result<ForwardAnswers, Status>>(64);
        // Each answer holds its request's permit until it is handed to the stream: a follower
        // that sends but never reads stalls this member's reading at MAX_IN_FLIGHT instead of
        // queueing answers without bound.
        let (done, mut done_rx) =
            mpsc::unbounded_channel::<(ForwardAnswer, OwnedSemaphorePermit)>();
        let failed = out.clone();
        let service = self.clone();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let mut batch = Some(first);
            while let Some(b) = batch.take() {
                if b.from != from {
                    let _ = failed
                        .send(Err(Status::permission_denied(format!(
                            "a forwarding stream opened by member {from} carried a message \
                             from member {}",
                            b.from
                        ))))
                        .await;
                    return;
                }
                if let Err(status) = service.transport.authorize_peer(&credentials, from) {
                    let _ = failed.send(Err(status)).await;
                    return;
                }
                for call in b.calls {
                    let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                        return;
                    };
                    let node = service.node.clone();
                    let done = done.clone();
                    tokio::spawn(async move {
                        let outcome = match call.call {
                            Some(c) => match run_locally(&node, c).await {
                                Ok(outcome) => outcome,
                                Err(e) => {
                                    forward_answer::Outcome::Refusal(refusal_of(&propose_status(e)))
                                }
                            },
                            None => forward_answer::Outcome::Refusal(ForwardRefusal {
                                code: Code::InvalidArgument as i32,
                                kind: "invalid-request".to_string(),
                                leader: 0,
                                message: "a forwarded call without a request".to_string(),
                            }),
                        };
                        let answer = ForwardAnswer {
                            id: call.id,
                            outcome: Some(outcome),
                        };
                        let _ = done.send((answer, permit));
                    });
                }
                batch = inbound.message().await.unwrap_or_default();
            }
            // The follower closed its half (or broke it): the requests still in flight are
            // answered as they complete, then the answers' stream ends.
        });
        tokio::spawn(async move {
            while let Some((first, permit)) = done_rx.recv().await {
                let (mut answers, mut permits) = (vec![first], vec![permit]);
                while answers.len() < MAX_BATCH {
                    match done_rx.try_recv() {
                        Ok((a, p)) => {
                            answers.push(a);
                            permits.push(p);
                        }
                        Err(_) => break,
                    }
                }
                if out.send(Ok(ForwardAnswers { answers })).await.is_err() {
                    break;
                }
                drop(permits);
            }
        });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// The response bytes of an answer to a proposal, keep-alive or close.
pub(crate) fn response_of(outcome: forward_answer::Outcome) -> Result<Bytes, Status> {
    match outcome {
        forward_answer::Outcome::Response(response) => Ok(response),
        _ => Err(unknown("the leader's answer did not match the request")),
    }
}

/// The session id of an answer to an open-session request.
pub(crate) fn session_of(outcome: forward_answer::Outcome) -> Result<u64, Status> {
    match outcome {
        forward_answer::Outcome::Session(id) => Ok(id),
        _ => Err(unknown("the leader's answer did not match the request")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: &Status) -> (Code, Option<&str>, Option<&str>) {
        let meta = |key| status.metadata().get(key).and_then(|v| v.to_str().ok());
        (status.code(), meta(ERROR_KIND), meta(LEADER_ID))
    }

    /// The follower passes on what the leader said; what it cannot read is an unknown
    /// outcome, never a "not applied".
    #[test]
    fn a_leaders_answer_is_passed_on_as_it_came() {
        let refused = |code: Code, kind: &str, leader: u64| {
            Some(forward_answer::Outcome::Refusal(ForwardRefusal {
                code: code as i32,
                kind: kind.to_string(),
                leader,
                message: "why".to_string(),
            }))
        };
        let status = answer_of(refused(Code::FailedPrecondition, "not-leader", 3)).unwrap_err();
        assert_eq!(
            kind(&status),
            (Code::FailedPrecondition, Some("not-leader"), Some("3"))
        );
        assert_eq!(status.message(), "why");
        let status =
            answer_of(refused(Code::ResourceExhausted, "session-too-many", 0)).unwrap_err();
        assert_eq!(
            kind(&status),
            (Code::ResourceExhausted, Some("session-too-many"), None)
        );
        for unreadable in ["", "caf\u{e9}", "a\nb"] {
            let status = answer_of(refused(Code::Unavailable, unreadable, 0)).unwrap_err();
            assert_eq!(kind(&status).1, Some("unknown-outcome"), "{unreadable:?}");
        }
        assert_eq!(
            kind(&answer_of(None).unwrap_err()).1,
            Some("unknown-outcome")
        );
        let ok = answer_of(Some(forward_answer::Outcome::Response(Bytes::from_static(
            b"r",
        ))));
        assert_eq!(response_of(ok.unwrap()).unwrap(), Bytes::from_static(b"r"));
        // An answer of the wrong shape for its request: the outcome is not known.
        let mismatched = response_of(forward_answer::Outcome::Session(4)).unwrap_err();
        assert_eq!(kind(&mismatched).1, Some("unknown-outcome"));
        assert_eq!(session_of(forward_answer::Outcome::Session(4)).unwrap(), 4);
    }

    /// What a leader's refusal becomes on the wire between the members keeps its kind and
    /// leader, and a status without a kind (not the client service's) is an unknown outcome.
    #[test]
    fn a_refusal_survives_the_trip_between_the_members() {
        let status = refusal(
            Code::FailedPrecondition,
            "not-leader",
            Some(2),
            "no".to_string(),
        );
        let back =
            answer_of(Some(forward_answer::Outcome::Refusal(refusal_of(&status)))).unwrap_err();
        assert_eq!(kind(&back), kind(&status));
        let plain = refusal_of(&Status::internal("boom"));
        assert_eq!(plain.kind, "unknown-outcome");
        assert_eq!(plain.leader, 0);
    }

    /// How a fake leader treats a forwarding stream.
    #[derive(Clone, Copy)]
    enum Leader {
        /// Answers every proposal with its command.
        Echo,
        /// Has no forwarding (a member of an older version).
        NoForwarding,
        /// Reads the first message, then breaks the stream without answering.
        Breaks,
    }

    #[derive(Clone, Copy)]
    struct Fake(Leader);

    #[dengine_net_grpc::tonic::async_trait]
    impl Forward for Fake {
        type StreamStream = ReceiverStream<Result<ForwardAnswers, Status>>;

        async fn stream(
            &self,
            request: Request<Streaming<ForwardBatch>>,
        ) -> Result<Response<Self::StreamStream>, Status> {
            let mut inbound = request.into_inner();
            let (tx, rx) = mpsc::channel(16);
            match self.0 {
                Leader::NoForwarding => return Err(Status::unimplemented("no such service")),
                Leader::Breaks => {
                    let _ = inbound.message().await;
                    let _ = tx.send(Err(Status::internal("the leader crashed"))).await;
                }
                Leader::Echo => {
                    tokio::spawn(async move {
                        while let Ok(Some(batch)) = inbound.message().await {
                            let answers = batch
                                .calls
                                .into_iter()
                                .map(|c| ForwardAnswer {
                                    id: c.id,
                                    outcome: match c.call {
                                        Some(forward_call::Call::Propose(p)) => {
                                            Some(forward_answer::Outcome::Response(p.command))
                                        }
                                        _ => None,
                                    },
                                })
                                .collect();
                            if tx.send(Ok(ForwardAnswers { answers })).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    /// A fake leader (member 1) on a free loopback port; its address.
    async fn fake_leader(kind: Leader) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            dengine_net_grpc::tonic::transport::Server::builder()
                .add_service(ForwardServer::new(Fake(kind)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address
    }

    fn forwarder() -> Arc<Forwarder> {
        let transport = GrpcTransport::new(dengine_net_grpc::GrpcConfig::new(2, 1)).unwrap();
        Arc::new(Forwarder::new(transport, 2, 1 << 20))
    }

    fn propose(command: &'static [u8]) -> forward_call::Call {
        forward_call::Call::Propose(dengine_net_grpc::client_pb::ProposeRequest {
            command: Bytes::from_static(command),
            ..Default::default()
        })
    }

    /// Concurrent requests share one stream and each gets its own answer.
    #[tokio::test]
    async fn each_request_gets_its_own_answer() {
        let address = fake_leader(Leader::Echo).await;
        let forwarder = forwarder();
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..50u8 {
            let (forwarder, address) = (Arc::clone(&forwarder), address.clone());
            calls.spawn(async move {
                let command = Bytes::from(vec![i; 3]);
                let call =
                    forward_call::Call::Propose(dengine_net_grpc::client_pb::ProposeRequest {
                        command: command.clone(),
                        ..Default::default()
                    });
                let answer = forwarder.forward(1, &address, call).await.unwrap();
                assert_eq!(response_of(answer).unwrap(), command);
            });
        }
        while let Some(done) = calls.join_next().await {
            done.unwrap();
        }
        assert_eq!(forwarder.queues.lock().unwrap().len(), 1, "one stream");
    }

    /// What a follower answers when the leader is not there to answer: never "not applied"
    /// for a request that was sent.
    #[tokio::test]
    async fn a_failed_stream_says_whether_the_request_may_have_been_applied() {
        // Sent, then the stream broke: may have been applied.
        let address = fake_leader(Leader::Breaks).await;
        let status = forwarder()
            .forward(1, &address, propose(b"a"))
            .await
            .unwrap_err();
        assert_eq!(kind(&status).1, Some("unknown-outcome"), "{status:?}");

        // No forwarding at the leader: nothing proposed, the client goes there itself.
        let address = fake_leader(Leader::NoForwarding).await;
        let status = forwarder()
            .forward(1, &address, propose(b"a"))
            .await
            .unwrap_err();
        assert_eq!(
            kind(&status),
            (Code::FailedPrecondition, Some("not-leader"), Some("1")),
            "{status:?}"
        );

        // Nobody listening: never sent, not applied.
        let nobody = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let status = forwarder()
            .forward(1, &nobody, propose(b"a"))
            .await
            .unwrap_err();
        assert_eq!(kind(&status).1, Some("retry"), "{status:?}");
    }
}
