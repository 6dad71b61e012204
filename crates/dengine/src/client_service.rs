//! The `dengine.client.v1.Client` gRPC service on a [`Node`]: proposals (plain, or exactly once
//! in a client session), reads, and the leader and membership, for programs on other
//! machines. [`start`](crate::start) serves it on `node.client_addr`; an application that
//! serves its own API ([`start_with`](crate::start_with)) adds it with
//! [`ClientService::server`] if it wants it. The client library is the `dengine-client`
//! crate.
//!
//! A follower answers a proposal or session call as the caller chose in the request's
//! `forward` field: refused with the `not-leader` kind and the leader's id, so that the
//! client sends it to the leader (the default), or forwarded to the leader on a stream
//! between the members and answered with the leader's reply
//! ([`with_forwarding`](ClientService::with_forwarding), which [`start`](crate::start) sets
//! up). Reads are served by any member (a follower confirms a linearizable one with its
//! leader). Every refusal carries a `dengine-error` metadata kind that says whether the
//! command was applied (see `proto/dengine/client/v1/client.proto`), so that a client never
//! has to parse a message to decide whether it may retry.

use std::pin::Pin;
use std::sync::Arc;

use dengine_core::ProposeError as CoreRefusal;
use dengine_net_grpc::GrpcTransport;
use dengine_net_grpc::client_pb;
use dengine_net_grpc::client_pb::client_server::{Client, ClientServer};
use dengine_net_grpc::client_pb::{forward_answer, forward_call};
use dengine_net_grpc::tonic::{Request, Response, Status};
use dengine_node::{Consistency, Leadership, Node, ProposeError, SessionId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client_forward::{ForwardService, Forwarder, response_of, run_locally, session_of};
pub use crate::client_status::{ERROR_KIND, LEADER_ID, propose_status, read_status};

/// Serves the client API of one node. Add it to a tonic server with [`ClientService::server`].
#[derive(Clone, Debug)]
pub struct ClientService {
    node: Node,
    max_request_bytes: usize,
    /// Set by [`with_forwarding`](Self::with_forwarding): how requests marked `forward`
    /// reach the leader.
    forwarder: Option<Arc<Forwarder>>,
}

impl ClientService {
    /// The client service of `node`, accepting requests of up to `max_request_bytes`
    /// (`raft.max_proposal_bytes` plus some headroom is a good value: a larger command would
    /// be refused anyway, and the bound is what one request can make a member buffer).
    pub fn new(node: Node, max_request_bytes: usize) -> Self {
        ClientService {
            node,
            max_request_bytes,
            forwarder: None,
        }
    }

    /// Forwards the proposals and session calls that a client marks `forward`, when this
    /// member is not the leader, to the leader's peer listener through `transport` (the
    /// node's own peer transport, whose TLS and credentials the leader checks); the leader
    /// must serve [`forward_service`](Self::forward_service) there. Without this, such
    /// requests are refused with `not-leader` like the others.
    #[must_use]
    pub fn with_forwarding(mut self, transport: GrpcTransport) -> Self {
        let forwarder = Forwarder::new(
            transport,
            self.node.id(),
            self.max_request_bytes
                .saturating_add(crate::client_forward::BATCH_BYTES),
        );
        self.forwarder = Some(Arc::new(forwarder));
        self
    }

    /// The leader's side of forwarding (`dengine.client.v1.Forward`), for the peer
    /// listener's routes: runs the requests other members forward on this node, for members
    /// whose peer credentials `transport` accepts.
    pub fn forward_service(&self, transport: GrpcTransport) -> ForwardService {
        ForwardService::new(self.node.clone(), transport, self.max_request_bytes)
    }

    /// Runs `call` here; if this member is not the leader and the caller asked for it
    /// (`forward`), on the leader.
    async fn run(
        &self,
        call: forward_call::Call,
        forward: bool,
    ) -> Result<forward_answer::Outcome, Status> {
        let forwarder = self.forwarder.as_ref().filter(|_| forward);
        let copy = forwarder.map(|_| call.clone());
        match run_locally(&self.node, call).await {
            Ok(outcome) => Ok(outcome),
            Err(ProposeError::Refused(CoreRefusal::NotLeader {
                leader: Some(leader),
                leader_address,
            })) if forwarder.is_some() && leader != self.node.id() => {
                let address = leader_address.or_else(|| {
                    let leadership = self.node.watch_leadership();
                    leadership
                        .borrow()
                        .membership
                        .address(leader)
                        .map(str::to_owned)
                });
                match (forwarder, copy, address) {
                    (Some(forwarder), Some(call), Some(address)) => {
                        forwarder.forward(leader, &address, call).await
                    }
                    _ => Err(propose_status(ProposeError::Refused(
                        CoreRefusal::NotLeader {
                            leader: Some(leader),
                            leader_address: None,
                        },
                    ))),
                }
            }
            Err(e) => Err(propose_status(e)),
        }
    }

    /// The tonic service, ready for `Server::builder().add_service(..)`.
    pub fn server(self) -> ClientServer<ClientService> {
        let max = self.max_request_bytes;
        // Answers are the state machine's own responses: not bounded here.
        ClientServer::new(self).max_decoding_message_size(max)
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
        let forward = r.forward;
        let outcome = self.run(forward_call::Call::Propose(r), forward).await?;
        let response = response_of(outcome)?;
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
        request: Request<client_pb::OpenSessionRequest>,
    ) -> Result<Response<client_pb::OpenSessionReply>, Status> {
        let r = request.into_inner();
        let forward = r.forward;
        let outcome = self
            .run(forward_call::Call::OpenSession(r), forward)
            .await?;
        let session: SessionId = session_of(outcome)?;
        Ok(Response::new(client_pb::OpenSessionReply { session }))
    }

    async fn keep_session_alive(
        &self,
        request: Request<client_pb::SessionRequest>,
    ) -> Result<Response<client_pb::SessionReply>, Status> {
        let r = request.into_inner();
        let forward = r.forward;
        let outcome = self
            .run(forward_call::Call::KeepSessionAlive(r), forward)
            .await?;
        response_of(outcome)?;
        Ok(Response::new(client_pb::SessionReply {}))
    }

    async fn close_session(
        &self,
        request: Request<client_pb::SessionRequest>,
    ) -> Result<Response<client_pb::SessionReply>, Status> {
        let r = request.into_inner();
        let forward = r.forward;
        let outcome = self
            .run(forward_call::Call::CloseSession(r), forward)
            .await?;
        response_of(outcome)?;
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
