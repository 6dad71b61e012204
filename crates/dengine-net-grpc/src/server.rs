//! The server side: the `Peer` gRPC service and a ready-made server for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dengine_core::Inbox;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::GrpcError;
use crate::pb;
use crate::pb::peer_server::{Peer, PeerServer};
use crate::snapshot;
use crate::transport::{CONNECTION_WINDOW, GrpcTransport, STREAM_WINDOW, Shared};

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
    /// message-size limits and compression. Responses to a peer's stream travel back on it.
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
        let mut server = PeerServer::new(PeerService {
            shared: self.shared.clone(),
            snapshots: Arc::new(snapshot::Receiver::default()),
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

    /// The TLS settings for a server, if TLS is configured.
    pub fn server_tls(&self) -> Option<ServerTlsConfig> {
        self.shared.common.tls.as_ref().map(|tls| {
            ServerTlsConfig::new()
                .identity(tls.identity.clone())
                .client_ca_root(tls.ca.clone())
                .client_auth_optional(!tls.require_client_cert)
        })
    }

    /// Binds `addr` (port 0 picks a free port) and serves the peer service on it until the
    /// returned handle is shut down or dropped.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        inbox: Arc<dyn Inbox>,
    ) -> Result<ServerHandle, GrpcError> {
        self.serve_with(addr, inbox, |routes| routes).await
    }

    /// [`serve`](Self::serve), with more services added to the same server by `add` (e.g.
    /// `|routes| routes.add_service(my_service)`).
    pub async fn serve_with(
        &self,
        addr: SocketAddr,
        inbox: Arc<dyn Inbox>,
        add: impl FnOnce(Routes) -> Routes,
    ) -> Result<ServerHandle, GrpcError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| GrpcError::Bind {
                addr,
                detail: e.to_string(),
            })?;
        let local_addr = listener.local_addr().map_err(|e| GrpcError::Bind {
            addr,
            detail: e.to_string(),
        })?;
        let mut builder = Server::builder()
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            // Large frames: a 64 KiB append crosses in one frame instead of four.
            .max_frame_size(Some(1 << 20));
        if let Some(tls) = self.server_tls() {
            builder = builder.tls_config(tls).map_err(|e| GrpcError::Tls {
                detail: e.to_string(),
            })?;
        }
        let (close, closed) = watch::channel(false);
        let routes = add(Routes::new(self.service_with(inbox, closed)));
        let router = builder.add_routes(routes);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let id = self.id();
        let task = tokio::spawn(async move {
            // TCP_NODELAY on every accepted connection. The builder's `tcp_nodelay` applies
            // only to listeners tonic binds itself, not to an incoming stream: without this,
            // Nagle's algorithm held small responses until the client's delayed ACK, ~40 ms
            // per read (found by `cargo xtask bench e2e`).
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let stop = async {
                let _ = stop_rx.await;
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
                tracing::error!(node = id, "peer server stopped: {e}");
            }
        });
        Ok(ServerHandle {
            local_addr,
            close,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// A running peer server. Dropping it stops the server (without waiting).
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    close: watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, ends the open streams (peers reconnect elsewhere or
    /// later) and waits up to two seconds for the connections to close.
    pub async fn shutdown(mut self) {
        let _ = self.close.send(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.close.send(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type StreamStream = ReceiverStream<Result<pb::RaftMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::RaftMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
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
                    // its way back on this stream.
                    None if from != 0 => {
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
                if let Err(status) = common.deliver(&m) {
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
        self.shared.common.deliver(request.get_ref())?;
        Ok(Response::new(pb::DeliverReply {}))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotReply>, Status> {
        if *self.closed.borrow() {
            return Err(Status::unavailable("the node is shutting down"));
        }
        let reply = self
            .snapshots
            .receive(&self.shared.common, request.into_inner())
            .await?;
        Ok(Response::new(reply))
    }
}
