//! The `dengine.client.v1.Client` gRPC service on a [`Node`]: proposals (plain, or exactly once
//! in a client session), reads, and the leader and membership, for programs on other
//! machines. [`start`](crate::start) serves it on `node.client_addr`; an application that
//! serves its own API ([`start_with`](crate::start_with)) adds it with
//! [`ClientService::server`] if it wants it. The client library is the `dengine-client`
//! crate.
//!
//! A follower does not forward proposals: it refuses them with the `not-leader` kind and the
//! leader's id, and the client sends them to the leader (reads are served by any member; a
//! follower confirms a linearizable one with its leader). Every refusal carries a
//! `dengine-error` metadata kind that says whether the command was applied (see
//! `proto/dengine/client/v1/client.proto`), so that a client never has to parse a message
//! to decide whether it may retry.

use std::pin::Pin;

use dengine_core::sessions::SessionRefusal;
use dengine_net_grpc::client_pb;
use dengine_net_grpc::client_pb::client_server::{Client, ClientServer};
use dengine_net_grpc::tonic::metadata::{MetadataMap, MetadataValue};
use dengine_net_grpc::tonic::{Code, Request, Response, Status};
use dengine_node::{Consistency, Leadership, Node, ProposeError, ReadError, SessionId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The metadata key of an error's kind.
pub const ERROR_KIND: &str = "dengine-error";
/// The metadata key of the leader's id on a `not-leader` refusal.
pub const LEADER_ID: &str = "dengine-leader";

/// Serves the client API of one node. Add it to a tonic server with [`ClientService::server`].
#[derive(Clone, Debug)]
pub struct ClientService {
    node: Node,
    max_request_bytes: usize,
}

impl ClientService {
    /// The client service of `node`, accepting requests of up to `max_request_bytes`
    /// (`raft.max_proposal_bytes` plus some headroom is a good value: a larger command would
    /// be refused anyway, and the bound is what one request can make a member buffer).
    pub fn new(node: Node, max_request_bytes: usize) -> Self {
        ClientService {
            node,
            max_request_bytes,
        }
    }

    /// The tonic service, ready for `Server::builder().add_service(..)`.
    pub fn server(self) -> ClientServer<ClientService> {
        let max = self.max_request_bytes;
        // Answers are the state machine's own responses: not bounded here.
        ClientServer::new(self).max_decoding_message_size(max)
    }
}

/// A refusal with its kind (and the leader's id, for `not-leader`) in the metadata.
fn refusal(code: Code, kind: &'static str, leader: Option<u64>, message: String) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(ERROR_KIND, MetadataValue::from_static(kind));
    if let Some(leader) = leader {
        metadata.insert(LEADER_ID, MetadataValue::from(leader));
    }
    Status::with_metadata(code, message, metadata)
}

/// The gRPC status of a failed proposal or session call.
pub fn propose_status(e: ProposeError) -> Status {
    use dengine_core::ProposeError as Core;
    let message = e.to_string();
    match e {
        ProposeError::Refused(Core::NotLeader {
            leader: Some(leader),
            ..
        }) => refusal(
            Code::FailedPrecondition,
            "not-leader",
            Some(leader),
            message,
        ),
        ProposeError::Refused(Core::NotLeader { leader: None, .. })
        | ProposeError::Refused(Core::TransferInProgress { .. })
        | ProposeError::Refused(Core::UncommittedLimit { .. })
        | ProposeError::Busy(_) => refusal(Code::Unavailable, "retry", None, message),
        ProposeError::Refused(Core::TooLarge { .. }) => {
            refusal(Code::InvalidArgument, "too-large", None, message)
        }
        ProposeError::Timeout => refusal(Code::DeadlineExceeded, "unknown-outcome", None, message),
        ProposeError::Interrupted(_)
        | ProposeError::ShuttingDown
        | ProposeError::Stopped { .. } => {
            refusal(Code::Unavailable, "unknown-outcome", None, message)
        }
        ProposeError::Session(why) => {
            let (code, kind) = match why {
                SessionRefusal::UnknownSession => (Code::FailedPrecondition, "session-unknown"),
                SessionRefusal::AlreadyAcknowledged => {
                    (Code::FailedPrecondition, "session-acknowledged")
                }
                SessionRefusal::TooManyUnacknowledged => {
                    (Code::ResourceExhausted, "session-too-many")
                }
                SessionRefusal::InvalidSequence | SessionRefusal::Malformed => {
                    (Code::InvalidArgument, "session-invalid")
                }
            };
            refusal(code, kind, None, message)
        }
        ProposeError::SessionsOff => {
            refusal(Code::FailedPrecondition, "sessions-off", None, message)
        }
        ProposeError::ResponseLost => {
            refusal(Code::FailedPrecondition, "response-lost", None, message)
        }
        // A kind added later: its outcome is not known to this mapping.
        _ => refusal(Code::Unavailable, "unknown-outcome", None, message),
    }
}

/// The gRPC status of a failed read. Nothing of a read changes state, so every kind but a
/// failed query may be retried.
pub fn read_status(e: ReadError) -> Status {
    let message = e.to_string();
    match e {
        ReadError::StateMachine(_) => refusal(Code::Internal, "read-failed", None, message),
        ReadError::Timeout => refusal(Code::DeadlineExceeded, "retry", None, message),
        _ => refusal(Code::Unavailable, "retry", None, message),
    }
}

fn leader_reply(id: u64, l: &Leadership) -> client_pb::LeaderReply {
    client_pb::LeaderReply {
        id,
        role: l.role.to_string(),
        term: l.term,
        leader: l.leader.unwrap_or(0),
        members: l
            .membership
            .members()
            .map(|m| client_pb::Member {
                id: m,
                peer_address: l.membership.address(m).unwrap_or_default().to_string(),
                voter: l.membership.is_voter(m),
            })
            .collect(),
    }
}

/// Replies of [`Client::watch_leader`] that a client has not read yet; older ones are
/// superseded, so a slow reader holds a few, never an unbounded queue.
const WATCH_BUFFER: usize = 4;

#[dengine_net_grpc::tonic::async_trait]
impl Client for ClientService {
    async fn propose(
        &self,
        request: Request<client_pb::ProposeRequest>,
    ) -> Result<Response<client_pb::ProposeReply>, Status> {
        let r = request.into_inner();
        let command = r.command;
        let response = if r.session == 0 {
            self.node.propose(command).await
        } else {
            self.node
                .propose_in_session(r.session, r.seq, r.first_unanswered, command)
                .await
        }
        .map_err(propose_status)?;
        Ok(Response::new(client_pb::ProposeReply { response }))
    }

    async fn read(
        &self,
        request: Request<client_pb::ReadRequest>,
    ) -> Result<Response<client_pb::ReadReply>, Status> {
        let r = request.into_inner();
        let consistency = match r.consistency() {
            client_pb::Consistency::Linearizable => Consistency::Linearizable,
            client_pb::Consistency::Lease => Consistency::Lease,
            client_pb::Consistency::Stale => Consistency::Stale,
        };
        let response = self
            .node
            .read(r.query, consistency)
            .await
            .map_err(read_status)?;
        Ok(Response::new(client_pb::ReadReply { response }))
    }

    async fn open_session(
        &self,
        _request: Request<client_pb::OpenSessionRequest>,
    ) -> Result<Response<client_pb::OpenSessionReply>, Status> {
        let id = self.node.open_session().await.map_err(propose_status)?;
        Ok(Response::new(client_pb::OpenSessionReply { session: id }))
    }

    async fn keep_session_alive(
        &self,
        request: Request<client_pb::SessionRequest>,
    ) -> Result<Response<client_pb::SessionReply>, Status> {
        let session: SessionId = request.into_inner().session;
        self.node
            .keep_session_alive(session)
            .await
            .map_err(propose_status)?;
        Ok(Response::new(client_pb::SessionReply {}))
    }

    async fn close_session(
        &self,
        request: Request<client_pb::SessionRequest>,
    ) -> Result<Response<client_pb::SessionReply>, Status> {
        let session: SessionId = request.into_inner().session;
        self.node
            .close_session(session)
            .await
            .map_err(propose_status)?;
        Ok(Response::new(client_pb::SessionReply {}))
    }

    async fn leader(
        &self,
        _request: Request<client_pb::LeaderRequest>,
    ) -> Result<Response<client_pb::LeaderReply>, Status> {
        let leadership = self.node.watch_leadership();
        let reply = leader_reply(self.node.id(), &leadership.borrow());
        Ok(Response::new(reply))
    }

    type WatchLeaderStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<client_pb::LeaderReply, Status>> + Send>>;

    async fn watch_leader(
        &self,
        _request: Request<client_pb::LeaderRequest>,
    ) -> Result<Response<Self::WatchLeaderStream>, Status> {
        let mut leadership = self.node.watch_leadership();
        let id = self.node.id();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            loop {
                let reply = leader_reply(id, &leadership.borrow_and_update());
                if tx.send(Ok(reply)).await.is_err() {
                    break;
                }
                // Ends when the client goes away (the stream is dropped) or the node stops.
                tokio::select! {
                    () = tx.closed() => break,
                    changed = leadership.changed() => if changed.is_err() { break },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_core::ProposeError as Core;

    fn kind(status: &Status) -> (&'static str, Code, Option<String>) {
        let meta = |key: &str| {
            status
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let kind = match meta(ERROR_KIND).as_deref() {
            Some("not-leader") => "not-leader",
            Some("retry") => "retry",
            Some("unknown-outcome") => "unknown-outcome",
            Some("too-large") => "too-large",
            Some("session-unknown") => "session-unknown",
            Some("session-acknowledged") => "session-acknowledged",
            Some("session-too-many") => "session-too-many",
            Some("session-invalid") => "session-invalid",
            Some("sessions-off") => "sessions-off",
            Some("response-lost") => "response-lost",
            Some("read-failed") => "read-failed",
            other => panic!("no known kind: {other:?}"),
        };
        (kind, status.code(), meta(LEADER_ID))
    }

    /// Every refusal says whether the command was applied (client.proto's table): what was
    /// certainly not applied is `not-leader`, `retry`, `too-large` or a session refusal; what
    /// may have been is `unknown-outcome`, never `retry`.
    #[test]
    fn every_propose_error_has_the_kind_that_says_whether_it_applied() {
        let cases = [
            (
                ProposeError::Refused(Core::NotLeader {
                    leader: Some(3),
                    leader_address: None,
                }),
                (
                    "not-leader",
                    Code::FailedPrecondition,
                    Some("3".to_string()),
                ),
            ),
            (
                ProposeError::Refused(Core::NotLeader {
                    leader: None,
                    leader_address: None,
                }),
                ("retry", Code::Unavailable, None),
            ),
            (
                ProposeError::Refused(Core::TransferInProgress { to: 2 }),
                ("retry", Code::Unavailable, None),
            ),
            (
                ProposeError::Refused(Core::UncommittedLimit {
                    uncommitted: 9,
                    max: 8,
                }),
                ("retry", Code::Unavailable, None),
            ),
            (
                ProposeError::Busy("full"),
                ("retry", Code::Unavailable, None),
            ),
            (
                ProposeError::Refused(Core::TooLarge { size: 9, max: 8 }),
                ("too-large", Code::InvalidArgument, None),
            ),
            (
                ProposeError::Timeout,
                ("unknown-outcome", Code::DeadlineExceeded, None),
            ),
            (
                ProposeError::Interrupted("snapshot"),
                ("unknown-outcome", Code::Unavailable, None),
            ),
            (
                ProposeError::ShuttingDown,
                ("unknown-outcome", Code::Unavailable, None),
            ),
            (
                ProposeError::Stopped {
                    reason: "disk".into(),
                },
                ("unknown-outcome", Code::Unavailable, None),
            ),
            (
                ProposeError::Session(SessionRefusal::UnknownSession),
                ("session-unknown", Code::FailedPrecondition, None),
            ),
            (
                ProposeError::Session(SessionRefusal::AlreadyAcknowledged),
                ("session-acknowledged", Code::FailedPrecondition, None),
            ),
            (
                ProposeError::Session(SessionRefusal::TooManyUnacknowledged),
                ("session-too-many", Code::ResourceExhausted, None),
            ),
            (
                ProposeError::Session(SessionRefusal::InvalidSequence),
                ("session-invalid", Code::InvalidArgument, None),
            ),
            (
                ProposeError::SessionsOff,
                ("sessions-off", Code::FailedPrecondition, None),
            ),
            (
                ProposeError::ResponseLost,
                ("response-lost", Code::FailedPrecondition, None),
            ),
        ];
        for (error, want) in cases {
            let shown = error.to_string();
            let status = propose_status(error);
            assert_eq!(status.message(), shown, "the message is the error's");
            let (k, code, leader) = kind(&status);
            assert_eq!((k, code, leader), want, "{shown}");
        }
        let failed = read_status(ReadError::StateMachine("boom".into()));
        assert_eq!(kind(&failed).0, "read-failed");
        assert_eq!(kind(&read_status(ReadError::Timeout)).0, "retry");
        assert_eq!(kind(&read_status(ReadError::Busy)).0, "retry");
    }
}
