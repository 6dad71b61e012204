//! The server side: the `Peer` gRPC service and a ready-made server for it.

use std::net::SocketAddr;
use std::sync::Arc;

use dengine_core::{Inbox, NodeId};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use crate::error::GrpcError;
use crate::listener::{Listener, ServeOptions, ServerHandle, ServerTls, serve_routes};
use crate::proto::pb;
use crate::proto::pb::peer_server::{Peer, PeerServer};
use crate::snapshot;
use crate::transport::{GrpcTransport, Shared};

/// The `dengine.raft.v1.Peer` service of one node. Obtain it from
/// [`GrpcTransport::peer_service`] to add it to your own tonic server, or let
/// [`GrpcTransport::serve`] run a server for it.
pub struct PeerService {
    shared: Arc<Shared>,
    snapshots: Arc<snapshot::Receiver>,
    /// Changes when the server shuts down: open streams end, new calls are refused.
    closed: watch::Receiver<bool>,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService")
            .field("id", &self.shared.common.config.id)
            .finish_non_exhaustive()
    }
}

impl GrpcTransport {
    /// The peer service, delivering what peers send into `inbox`, with this transport's
    /// message-size limits, compression and peer authentication. Responses to a peer's stream
    /// travel back on it. For a server of your own; [`serve_peers`](Self::serve_peers) also
    /// applies the listener limits and TLS.
    pub fn peer_service(&self, inbox: Arc<dyn Inbox>) -> PeerServer<PeerService> {
        // Never closed (the sender is dropped at once, which disables the close signal): the
        // caller's server decides the service's lifetime.
        let (_, closed) = watch::channel(false);
        self.service_with(inbox, closed)
    }

    fn service_with(
        &self,
        inbox: Arc<dyn Inbox>,
        closed: watch::Receiver<bool>,
    ) -> PeerServer<PeerService> {
        self.set_inbox(inbox);
        let cfg = &self.shared.common.config;
        let spool = cfg.snapshot_spool_dir.clone().unwrap_or_else(|| {
            // One directory per service: several nodes may share a process (tests).
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            std::env::temp_dir().join(format!(
                "dengine-snapshots-{}-{}-{}",
                cfg.id,
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ))
        });
        let mut server = PeerServer::new(PeerService {
            shared: self.shared.clone(),
            snapshots: Arc::new(snapshot::Receiver::new(spool)),
            closed,
        })
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes)
        .accept_compressed(CompressionEncoding::Gzip);
        if cfg.compression {
            server = server.send_compressed(CompressionEncoding::Gzip);
        }
        server
    }

    /// The server side of this transport's TLS, if TLS is configured.
    pub fn server_tls(&self) -> Option<ServerTls> {
        self.shared.common.tls.as_ref().map(|t| t.server.clone())
    }

    /// Checks that `request` may speak for member `from` under this node's peer
    /// authentication (cluster secret, certificate names) and that `from` was not removed
    /// from the cluster; for the application's own services on the peer listener (such as
    /// write forwarding between members). Refusals are counted and logged like the peer
    /// service's own.
    pub fn authorize_peer<T>(
        &self,
        request: &tonic::Request<T>,
        from: NodeId,
    ) -> Result<(), Status> {
        let common = &self.shared.common;
        let checked = common
            .auth
            .credentials(request)
            .and_then(|credentials| common.auth.allows(&credentials, from));
        if let Err(status) = checked {
            common.refused("request", from, status.message());
            return Err(status);
        }
        if common.inbox().is_some_and(|inbox| inbox.is_retired(from)) {
            common.refused("request", from, "the sender was removed from the cluster");
            return Err(crate::common::retired_status(common.config.id, from));
        }
        Ok(())
    }

    /// Binds `addr` (port 0 picks a free port) and serves the peer service on it until the
    /// returned handle is shut down or dropped.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        inbox: Arc<dyn Inbox>,
    ) -> Result<ServerHandle, GrpcError> {
        let listener = Listener::bind(addr, "peer").await?;
        Ok(self.serve_peers(listener, inbox, |routes| routes))
    }

    /// Serves the peer service, and whatever `add` adds to the routes (the application's
    /// services between members, e.g. `|routes| routes.add_service(forwarding)`), on
    /// `listener` with this transport's TLS and listener limits.
    pub fn serve_peers(
        &self,
        listener: Listener,
        inbox: Arc<dyn Inbox>,
        add: impl FnOnce(Routes) -> Routes,
    ) -> ServerHandle {
        let (close, closed) = watch::channel(false);
        let routes = add(Routes::new(self.service_with(inbox, closed)));
        let cfg = &self.shared.common.config;
        if self.shared.common.tls.is_none()
            && cfg.cluster_secret.is_none()
            && !listener.local_addr().ip().is_loopback()
        {
            tracing::warn!(
                node = cfg.id,
                addr = %listener.local_addr(),
                "the peer listener is reachable from other hosts but neither peer TLS nor a \
                 cluster secret is configured: anyone who can reach it can impersonate a \
                 member, depose the leader and make replicas lose acknowledged writes; \
                 configure [network.tls] with require_client_cert, or at least \
                 network.cluster_secret_file (docs/operations.md, \"Securing a cluster\")"
            );
        }
        serve_routes(
            listener,
            routes,
            self.server_tls(),
            &cfg.listener,
            close,
            ServeOptions::default(),
        )
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type StreamStream = ReceiverStream<Result<pb::RaftMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::RaftMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let credentials = self
            .shared
            .common
            .auth
            .credentials(&request)
            .inspect_err(|e| {
                self.shared.common.refused("stream", 0, e.message());
            })?;
        let mut inbound = request.into_inner();
        let cfg = &self.shared.common.config;
        let (tx, rx) = mpsc::channel(cfg.peer_queue_len);
        let shared = self.shared.clone();
        let mut closed = self.closed.clone();
        tokio::spawn(async move {
            let common = &shared.common;
            let mut registered: Option<(u64, u64)> = None;
            loop {
                let m = tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(m)) => m,
                        Ok(None) | Err(_) => break,
                    },
                    Ok(()) = closed.changed() => break,
                };
                let from = m.header.as_ref().map_or(0, |h| h.from);
                match registered {
                    // Register before delivering: the answer to the first message must find
                    // its way back on this stream. Only a sender the credentials allow may
                    // register: responses meant for a member must never go to an impostor.
                    None if from != 0 => {
                        if let Err(status) = common.auth.allows(&credentials, from) {
                            common.refused("stream", from, status.message());
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                        registered = Some((from, shared.register_route(from, tx.clone())));
                    }
                    Some((first, _)) if first != from => {
                        let status = Status::failed_precondition(format!(
                            "one stream carries one sender: this stream started with node \
                             {first}, then node {from} wrote on it"
                        ));
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                    _ => {}
                }
                if let Err(status) = common.deliver(&m, &credentials) {
                    // Wrong cluster or node, or malformed: tell the sender and end the stream.
                    let _ = tx.send(Err(status)).await;
                    break;
                }
            }
            if let Some((from, generation)) = registered {
                shared.unregister_route(from, generation);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn deliver(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::DeliverReply>, Status> {
        if *self.closed.borrow() {
            return Err(Status::unavailable("the node is shutting down"));
        }
        let common = &self.shared.common;
        let credentials = common.auth.credentials(&request).inspect_err(|e| {
            common.refused("message", 0, e.message());
        })?;
        common.deliver(request.get_ref(), &credentials)?;
        Ok(Response::new(pb::DeliverReply {}))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotReply>, Status> {
        if *self.closed.borrow() {
            return Err(Status::unavailable("the node is shutting down"));
        }
        let reply = self.snapshots.receive(&self.shared.common, request).await?;
        Ok(Response::new(reply))
    }

    async fn probe(
        &self,
        request: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeReply>, Status> {
        let common = &self.shared.common;
        let credentials = common.auth.credentials(&request).inspect_err(|e| {
            common.refused("probe", 0, e.message());
        })?;
        let cfg = &common.config;
        let from =
            crate::convert::check_header(request.get_ref().header.as_ref(), cfg.cluster_id, cfg.id)
                .map_err(|e| {
                    common.refused("probe", 0, &e.to_string());
                    Status::failed_precondition(e.to_string())
                })?;
        common.auth.allows(&credentials, from).inspect_err(|e| {
            common.refused("probe", from, e.message());
        })?;
        let view = common
            .inbox()
            .and_then(|inbox| inbox.describe())
            .unwrap_or_default();
        let known_incarnation = common.incarnations.lock().get(&from).copied().unwrap_or(0);
        Ok(Response::new(pb::ProbeReply {
            term: view.term,
            membership: Some(crate::convert::encode_membership(&view.membership)),
            last_index: view.last_index,
            known_incarnation,
        }))
    }
}
