//! [`GrpcTransport`]: the client side (per-peer queues, streams, reconnects) and the shared
//! state the server side uses to route responses back on inbound streams.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dengine_core::store::SnapshotData;
use dengine_core::{Inbox, Message, MessageBody, NodeId, Transport, TransportError};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::{Certificate, Channel, Identity};

use crate::auth::PeerAuth;
use crate::common::{Common, LoadedTls};
use crate::config::GrpcConfig;
use crate::convert::{self, DecodeLimits};
use crate::error::GrpcError;
use crate::listener::ServerTls;
use crate::proto::pb;
use crate::proto::pb::peer_client::PeerClient;
use crate::stats::{Counters, TransportStats};

/// What a member answered to [`GrpcTransport::probe`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// Its view of the cluster: term, last log index, committed configuration.
    pub view: dengine_core::ClusterView,
    /// The incarnation it last saw the prober's id announce (0: it never heard from it).
    pub known_incarnation: u64,
}

/// Whether `status` is a peer's deliberate refusal (worth a warning), not a broken connection.
fn is_refusal(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::FailedPrecondition
            | tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
    )
}

/// A task that is aborted when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Peer {
    address: String,
    data: mpsc::Sender<Message>,
    elect: mpsc::Sender<Message>,
    _task: AbortOnDrop,
}

/// An inbound stream from a peer, on which responses to that peer travel back.
struct Route {
    generation: u64,
    tx: mpsc::Sender<Result<pb::RaftMessage, Status>>,
}

pub(crate) struct Shared {
    pub(crate) common: Arc<Common>,
    peers: Mutex<HashMap<NodeId, Peer>>,
    routes: Mutex<HashMap<NodeId, Route>>,
    next_generation: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Records the inbound stream from `from`; returns its generation for
    /// [`unregister_route`](Self::unregister_route).
    pub(crate) fn register_route(
        &self,
        from: NodeId,
        tx: mpsc::Sender<Result<pb::RaftMessage, Status>>,
    ) -> u64 {
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.routes.lock().insert(from, Route { generation, tx });
        generation
    }

    pub(crate) fn unregister_route(&self, from: NodeId, generation: u64) {
        let mut routes = self.routes.lock();
        if routes
            .get(&from)
            .is_some_and(|r| r.generation == generation)
        {
            routes.remove(&from);
        }
    }
}

/// Election traffic travels on its own unary calls so that a replication backlog never delays
/// an election.
fn is_election(body: &MessageBody) -> bool {
    matches!(
        body,
        MessageBody::VoteRequest(_) | MessageBody::VoteResponse(_) | MessageBody::TimeoutNow
    )
}

/// The gRPC [`Transport`]: one bounded queue and one long-lived stream per peer.
///
/// Cheap to clone; all clones share the peers, connections and counters. Dropping the last
/// clone (and the server built from it) closes every connection.
#[derive(Clone)]
pub struct GrpcTransport {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("id", &self.shared.common.config.id)
            .field("cluster_id", &self.shared.common.config.cluster_id)
            .finish_non_exhaustive()
    }
}

impl GrpcTransport {
    /// A transport for the node `config.id`. Reads the TLS files now, so that a bad path is
    /// reported at startup rather than at the first connection. Must be called inside a tokio
    /// runtime only when peers are added (each peer runs a task).
    pub fn new(config: GrpcConfig) -> Result<Self, GrpcError> {
        // Exported at zero from the start, so that a dashboard has the series before the
        // first drop or refusal.
        for reason in ["queue_full", "unknown_peer", "unreachable"] {
            metrics::counter!("dengine_messages_dropped_total", "reason" => reason).increment(0);
        }
        for kind in ["message", "stream", "request", "snapshot", "probe"] {
            metrics::counter!("dengine_peer_refused_total", "kind" => kind).increment(0);
        }
        if config.id == 0 {
            return Err(GrpcError::Config("node id 0 is reserved".into()));
        }
        if config.peer_queue_len == 0 || config.snapshot_chunk_bytes == 0 {
            return Err(GrpcError::Config(
                "peer_queue_len and snapshot_chunk_bytes must be at least 1".into(),
            ));
        }
        let tls = match &config.tls {
            None => None,
            Some(t) => {
                let read = |path: &std::path::Path, what: &'static str| {
                    std::fs::read(path).map_err(|e| GrpcError::TlsFile {
                        what,
                        path: path.to_path_buf(),
                        detail: e.to_string(),
                    })
                };
                Some(LoadedTls {
                    identity: Identity::from_pem(
                        read(&t.cert, "certificate")?,
                        read(&t.key, "private key")?,
                    ),
                    ca: Certificate::from_pem(read(&t.ca, "CA certificate")?),
                    server: ServerTls::from_config(t)?,
                    server_name: t.server_name.clone(),
                })
            }
        };
        let limits = DecodeLimits {
            max_entry_bytes: config.max_message_bytes as u64,
            ..DecodeLimits::default()
        };
        let secret = match (&config.cluster_secret, &config.cluster_secret_file) {
            (Some(secret), _) => Some(secret.clone()),
            (None, Some(path)) => Some(crate::files::read_secret(path)?),
            (None, None) => None,
        };
        if let Some(secret) = &secret
            && (secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(GrpcError::Config(
                "the cluster secret must be at least 16 printable ASCII characters without \
                 spaces"
                    .into(),
            ));
        }
        let auth = PeerAuth::new(
            secret,
            config.tls.as_ref().is_some_and(|t| t.require_client_cert),
            config.member_names.clone(),
        );
        Ok(GrpcTransport {
            shared: Arc::new(Shared {
                common: Arc::new(Common {
                    config,
                    tls,
                    stats: Counters::default(),
                    inbox: RwLock::new(None),
                    limits,
                    auth,
                    refused_log: Mutex::new(dengine_core::LogLimiter::per_ten_seconds()),
                    incarnations: Mutex::new(HashMap::new()),
                }),
                peers: Mutex::new(HashMap::new()),
                routes: Mutex::new(HashMap::new()),
                next_generation: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.common.config.id
    }

    /// The transport's counters.
    pub fn stats(&self) -> TransportStats {
        self.shared.common.stats.snapshot()
    }

    /// Sets the inbox that messages from peers are delivered to (replacing an earlier one).
    /// Done by [`serve`](Self::serve) and [`peer_service`](Self::peer_service).
    pub fn set_inbox(&self, inbox: Arc<dyn Inbox>) {
        *self.shared.common.inbox.write() = Some(inbox);
    }

    /// A channel to the peer listener of the member at `address` (`host:port`), with this
    /// transport's TLS: for the application's own traffic between members, such as write
    /// forwarding. Connects on first use. Send requests built with
    /// [`peer_request`](Self::peer_request), which adds the cluster secret.
    pub fn peer_channel(&self, address: &str) -> Result<Channel, GrpcError> {
        Ok(self
            .shared
            .common
            .endpoint(address)?
            .connect_with_connector_lazy(crate::cork::CorkedConnector))
    }

    /// `message` as a request to another member: with the cluster secret, if configured.
    pub fn peer_request<T>(&self, message: T) -> tonic::Request<T> {
        self.shared.common.request(message)
    }

    /// Asks the member `peer` at `address` what it knows of the cluster, waiting at most
    /// `timeout`. A node whose data directory is empty asks this before it founds or joins a
    /// cluster: if a member has seen this node's id with another incarnation, this node lost
    /// its data and must not start as if it had none.
    pub async fn probe(
        &self,
        peer: NodeId,
        address: &str,
        timeout: Duration,
    ) -> Result<ProbeReport, GrpcError> {
        let common = &self.shared.common;
        let failed = |detail: String| GrpcError::Connect {
            address: address.to_string(),
            detail,
        };
        let call = async {
            let mut client = common.connect(address).await?;
            let request = common.request(pb::ProbeRequest {
                header: Some(pb::Header {
                    cluster_id: common.config.cluster_id,
                    from: common.config.id,
                    to: peer,
                    incarnation: common.config.incarnation,
                }),
            });
            let reply = client
                .probe(request)
                .await
                .map_err(|s| failed(format!("{}: {}", s.code(), s.message())))?
                .into_inner();
            let membership = match &reply.membership {
                Some(m) if !m.voters.is_empty() => convert::decode_membership(m, &common.limits)
                    .map_err(|e| failed(e.to_string()))?,
                _ => dengine_core::Membership::default(),
            };
            Ok(ProbeReport {
                view: dengine_core::ClusterView {
                    term: reply.term,
                    last_index: reply.last_index,
                    membership,
                },
                known_incarnation: reply.known_incarnation,
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| failed(format!("no answer within {timeout:?}")))?
    }

    /// The current address of `peer`, if known.
    pub fn peer_address(&self, peer: NodeId) -> Option<String> {
        self.shared
            .peers
            .lock()
            .get(&peer)
            .map(|p| p.address.clone())
    }

    fn enqueue(&self, message: Message) {
        let stats = &self.shared.common.stats;
        let election = is_election(&message.body);
        if message.body.is_response() && !election {
            let mut routes = self.shared.routes.lock();
            if let Some(route) = routes.get(&message.to) {
                let wire = self.shared.common.encode(&message);
                match route.tx.try_send(Ok(wire)) {
                    Ok(()) => {
                        Counters::add(&stats.sent);
                        return;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        Counters::dropped(&stats.dropped_queue_full, "queue_full");
                        return;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        routes.remove(&message.to);
                    }
                }
            }
        }
        let peers = self.shared.peers.lock();
        let Some(peer) = peers.get(&message.to) else {
            Counters::dropped(&stats.dropped_unknown_peer, "unknown_peer");
            return;
        };
        let queue = if election { &peer.elect } else { &peer.data };
        match queue.try_send(message) {
            Ok(()) => {}
            Err(_) => Counters::dropped(&stats.dropped_queue_full, "queue_full"),
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, message: Message) {
        self.enqueue(message);
    }

    fn send_snapshot(
        &self,
        message: Message,
        data: SnapshotData,
    ) -> impl std::future::Future<Output = Result<(), TransportError>> + Send {
        let common = self.shared.common.clone();
        let address = self.peer_address(message.to);
        async move {
            let Some(address) = address else {
                return Err(TransportError::UnknownPeer { peer: message.to });
            };
            crate::snapshot::send(&common, &address, message, data).await
        }
    }

    fn set_peer(&self, id: NodeId, address: String) {
        if id == self.id() {
            return;
        }
        let mut peers = self.shared.peers.lock();
        if peers.get(&id).is_some_and(|p| p.address == address) {
            return;
        }
        let len = self.shared.common.config.peer_queue_len;
        let (data, data_rx) = mpsc::channel(len);
        let (elect, elect_rx) = mpsc::channel(64.min(len).max(1));
        let task = tokio::spawn(run_peer(
            self.shared.common.clone(),
            id,
            address.clone(),
            data_rx,
            elect_rx,
        ));
        peers.insert(
            id,
            Peer {
                address,
                data,
                elect,
                _task: AbortOnDrop(task),
            },
        );
    }

    fn remove_peer(&self, id: NodeId) {
        self.shared.peers.lock().remove(&id);
        self.shared.routes.lock().remove(&id);
    }
}

/// Exponential backoff with ±50 % jitter, from a small deterministic generator.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
            rng: seed | 1,
        }
    }

    fn next(&mut self) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        // Uniform in [base / 2, base * 3 / 2) (saturating: a huge configured maximum must not
        // overflow).
        let jitter = (self.rng % 1000) as f64 / 1000.0;
        (base / 2).saturating_add(base.mul_f64(jitter))
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }
}

enum SessionEnd {
    /// The connection broke; reconnect.
    Broken,
    /// The peer was removed or the transport dropped.
    Closed,
}

/// One peer's lifetime: connect, stream until the connection breaks, back off, reconnect.
async fn run_peer(
    common: Arc<Common>,
    peer: NodeId,
    address: String,
    mut data_rx: mpsc::Receiver<Message>,
    mut elect_rx: mpsc::Receiver<Message>,
) {
    let me = common.config.id;
    let mut backoff = Backoff::new(
        common.config.reconnect_initial,
        common.config.reconnect_max,
        me.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ peer,
    );
    loop {
        match common.connect(&address).await {
            Ok(client) => {
                Counters::add(&common.stats.connects);
                tracing::debug!(node = me, peer, %address, "connected");
                match session(
                    &common,
                    peer,
                    client,
                    &mut data_rx,
                    &mut elect_rx,
                    &mut backoff,
                )
                .await
                {
                    SessionEnd::Closed => return,
                    SessionEnd::Broken => {
                        tracing::debug!(node = me, peer, "stream to peer broke; reconnecting");
                    }
                }
            }
            Err(e) => {
                Counters::add(&common.stats.connect_failures);
                tracing::debug!(node = me, peer, "connect failed: {e}");
            }
        }
        // While the peer is down, what is queued for it is dropped: Raft resends what
        // matters, and stale appends would only delay fresh ones.
        let pause = tokio::time::sleep(backoff.next());
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                m = data_rx.recv() => match m {
                    Some(_) => Counters::dropped(&common.stats.dropped_unreachable, "unreachable"),
                    None => return,
                },
                m = elect_rx.recv() => match m {
                    Some(_) => Counters::dropped(&common.stats.dropped_unreachable, "unreachable"),
                    None => return,
                },
            }
        }
    }
}

async fn session(
    common: &Arc<Common>,
    peer: NodeId,
    mut client: PeerClient<Channel>,
    data_rx: &mut mpsc::Receiver<Message>,
    elect_rx: &mut mpsc::Receiver<Message>,
    backoff: &mut Backoff,
) -> SessionEnd {
    let (tx, rx) = mpsc::channel::<pb::RaftMessage>(256);
    let mut inbound = match client.stream(common.request(ReceiverStream::new(rx))).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            common.check_removed(peer, &status);
            tracing::debug!(
                node = common.config.id,
                peer,
                "opening the stream failed: {status}"
            );
            return SessionEnd::Broken;
        }
    };
    backoff.reset();
    let reader = {
        let common = common.clone();
        async move {
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => {
                        let _ = common.deliver_from_dialed(&m, peer);
                    }
                    Ok(None) => return,
                    Err(status) => {
                        if !common.check_removed(peer, &status) && is_refusal(&status) {
                            tracing::warn!(
                                node = common.config.id,
                                peer,
                                "peer refused our stream: {}",
                                status.message()
                            );
                        }
                        return;
                    }
                }
            }
        }
    };
    tokio::pin!(reader);
    loop {
        tokio::select! {
            () = &mut reader => return SessionEnd::Broken,
            m = data_rx.recv() => {
                let Some(m) = m else { return SessionEnd::Closed };
                if tx.send(common.encode(&m)).await.is_err() {
                    Counters::dropped(&common.stats.dropped_unreachable, "unreachable");
                    return SessionEnd::Broken;
                }
                Counters::add(&common.stats.sent);
            }
            m = elect_rx.recv() => {
                let Some(m) = m else { return SessionEnd::Closed };
                let wire = common.encode(&m);
                let mut client = client.clone();
                let common = common.clone();
                tokio::spawn(async move {
                    let call = client.deliver(common.request(wire));
                    match tokio::time::timeout(common.config.deliver_timeout, call).await {
                        Ok(Ok(_)) => Counters::add(&common.stats.sent),
                        Ok(Err(status)) => {
                            Counters::dropped(&common.stats.dropped_unreachable, "unreachable");
                            if !common.check_removed(peer, &status) && is_refusal(&status) {
                                tracing::warn!(
                                    node = common.config.id,
                                    peer,
                                    "peer refused an election message: {}",
                                    status.message()
                                );
                            }
                        }
                        Err(_) => Counters::dropped(&common.stats.dropped_unreachable, "unreachable"),
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800), 7);
        let delays: Vec<Duration> = (0..6).map(|_| b.next()).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = Duration::from_millis(100 * (1 << i.min(3)));
            assert!(
                *d >= base / 2 && *d < base * 3 / 2,
                "{i}: {d:?} vs {base:?}"
            );
        }
        b.reset();
        assert!(b.next() < Duration::from_millis(150));
        // A maximum near Duration::MAX saturates instead of panicking.
        let mut huge = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX, 3);
        for _ in 0..4 {
            let _ = huge.next();
        }
    }
}
