//! [`GrpcTransport`]: the client side (per-peer queues, streams, reconnects) and the shared
//! state the server side uses to route responses back on inbound streams.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dengine_core::{Inbox, Message, MessageBody, NodeId, Transport, TransportError};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::GrpcError;
use crate::auth::{PeerAuth, SECRET_METADATA};
use crate::config::GrpcConfig;
use crate::convert::{self, DecodeLimits};
use crate::listener::ServerTls;
use crate::pb;
use crate::pb::peer_client::PeerClient;
use crate::stats::{Counters, TransportStats};

/// What every task of one transport shares: configuration, credentials, counters and the inbox.
pub(crate) struct Common {
    pub(crate) config: GrpcConfig,
    pub(crate) tls: Option<LoadedTls>,
    pub(crate) stats: Counters,
    pub(crate) inbox: RwLock<Option<Arc<dyn Inbox>>>,
    pub(crate) limits: DecodeLimits,
    pub(crate) auth: PeerAuth,
    /// Rate limit of the warnings about refused peer traffic.
    pub(crate) refused_log: Mutex<dengine_core::LogLimiter>,
    /// The last incarnation each sender announced.
    pub(crate) incarnations: Mutex<HashMap<NodeId, u64>>,
}

/// TLS material read from the configured files.
pub(crate) struct LoadedTls {
    pub(crate) identity: Identity,
    pub(crate) ca: Certificate,
    pub(crate) server: ServerTls,
    pub(crate) server_name: Option<String>,
}

/// What a member answered to [`GrpcTransport::probe`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// Its view of the cluster: term, last log index, committed configuration.
    pub view: dengine_core::ClusterView,
    /// The incarnation it last saw the prober's id announce (0: it never heard from it).
    pub known_incarnation: u64,
}

/// Metadata with which a member marks a refusal of a sender that a committed configuration
/// removed: the sender learns it was removed and stops.
pub(crate) const REFUSAL_METADATA: &str = "dengine-refusal";
/// The [`REFUSAL_METADATA`] value for a removed sender.
pub(crate) const REFUSAL_RETIRED: &str = "retired";

/// The status that tells `from` it was removed from the cluster.
pub(crate) fn retired_status(me: NodeId, from: NodeId) -> Status {
    let mut status = Status::failed_precondition(format!(
        "member {me} refuses node {from}: a committed configuration removed node {from} from \
         the cluster, and node ids are never reused; wipe its data directory and add it \
         again under a new id to bring the machine back"
    ));
    status.metadata_mut().insert(
        REFUSAL_METADATA,
        tonic::metadata::MetadataValue::from_static(REFUSAL_RETIRED),
    );
    status
}

impl Common {
    /// `m` on the wire, with this node's header.
    pub(crate) fn encode(&self, m: &Message) -> pb::RaftMessage {
        let mut wire = convert::encode_message(self.config.cluster_id, m);
        if let Some(h) = &mut wire.header {
            h.incarnation = self.config.incarnation;
        }
        wire
    }

    /// Remembers the incarnation `from` announced; warns when a member comes back with a new
    /// one under the same id (its storage was replaced: it may have lost what it
    /// acknowledged, which the leader detects and repairs, see `PeerRegression`).
    pub(crate) fn note_incarnation(&self, from: NodeId, incarnation: u64) {
        if incarnation == 0 {
            return;
        }
        let previous = self.incarnations.lock().insert(from, incarnation);
        if let Some(previous) = previous
            && previous != incarnation
        {
            metrics::counter!("dengine_peer_incarnation_changes_total").increment(1);
            tracing::warn!(
                node = self.config.id,
                peer = from,
                "member {from} came back with a new incarnation ({incarnation:#x}, was \
                 {previous:#x}): its data directory was replaced under the same member id; \
                 a member that lost its storage must be removed and added again under a new id \
                 (docs/operations.md, \"Replacing a member\")"
            );
        }
    }

    /// `message` wrapped in a request with the cluster secret, if one is configured.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(secret) = self.auth.outgoing_secret()
            && let Ok(value) = secret.parse()
        {
            request.metadata_mut().insert(SECRET_METADATA, value);
        }
        request
    }

    /// If `status` says a peer refused us because we were removed from the cluster, tells
    /// the inbox (the node stops). Returns whether it did.
    pub(crate) fn check_removed(&self, peer: NodeId, status: &Status) -> bool {
        let retired = status
            .metadata()
            .get(REFUSAL_METADATA)
            .is_some_and(|v| v == REFUSAL_RETIRED);
        if retired && let Some(inbox) = self.inbox() {
            inbox.removed_from_cluster(format!("member {peer}: {}", status.message()));
        }
        retired
    }

    /// Counts a refused peer request (`what`: message, stream, snapshot, ...) claiming to come
    /// from `from` (0 if unknown), and logs it at a bounded rate.
    pub(crate) fn refused(&self, what: &'static str, from: NodeId, detail: &str) {
        Counters::add(&self.stats.refused);
        metrics::counter!("dengine_peer_refused_total", "kind" => what).increment(1);
        let allowed = self.refused_log.lock().allow(std::time::Instant::now());
        if let Some(suppressed) = allowed {
            tracing::warn!(
                node = self.config.id,
                from,
                suppressed,
                "refused a peer {what}: {detail}"
            );
        }
    }

    /// Hands a checked, decoded message from a peer to the inbox. `credentials` are what the
    /// request presented; the sender it claims must match them. Snapshot metadata comes only
    /// with its data, through `InstallSnapshot`.
    pub(crate) fn deliver(
        &self,
        wire: &pb::RaftMessage,
        credentials: &crate::auth::PeerCredentials,
    ) -> Result<(), Status> {
        self.deliver_checked(wire, |from| self.auth.allows(credentials, from))
    }

    /// Hands a message that arrived on a connection this node opened to `peer` (whose server
    /// certificate TLS verified) to the inbox: it must come from `peer`.
    pub(crate) fn deliver_from_dialed(
        &self,
        wire: &pb::RaftMessage,
        peer: NodeId,
    ) -> Result<(), Status> {
        self.deliver_checked(wire, |from| {
            if from == peer {
                Ok(())
            } else {
                Err(Status::permission_denied(format!(
                    "a message on the connection to node {peer} claims to come from node {from}"
                )))
            }
        })
    }

    fn deliver_checked(
        &self,
        wire: &pb::RaftMessage,
        authorize: impl FnOnce(NodeId) -> Result<(), Status>,
    ) -> Result<(), Status> {
        let cfg = &self.config;
        let from = match convert::check_header(wire.header.as_ref(), cfg.cluster_id, cfg.id) {
            Ok(from) => from,
            Err(e) => {
                self.refused("message", 0, &e.to_string());
                return Err(Status::failed_precondition(e.to_string()));
            }
        };
        if let Err(status) = authorize(from) {
            self.refused("message", from, status.message());
            return Err(status);
        }
        if self.inbox().is_some_and(|inbox| inbox.is_retired(from)) {
            self.refused("message", from, "the sender was removed from the cluster");
            return Err(retired_status(cfg.id, from));
        }
        if let Some(h) = &wire.header {
            self.note_incarnation(from, h.incarnation);
        }
        let message = match convert::decode_message(wire, &self.limits) {
            Ok(m) => m,
            Err(e) => {
                self.refused("message", from, &format!("malformed: {e}"));
                return Err(Status::invalid_argument(e.to_string()));
            }
        };
        if matches!(message.body, MessageBody::InstallSnapshot(_)) {
            let detail = "InstallSnapshot travels only with its data, on the InstallSnapshot call";
            self.refused("message", from, detail);
            return Err(Status::invalid_argument(detail));
        }
        self.hand_to_inbox(message);
        Ok(())
    }

    /// The inbox in force (replaced when a server is started again).
    pub(crate) fn inbox(&self) -> Option<Arc<dyn Inbox>> {
        self.inbox.read().clone()
    }

    fn hand_to_inbox(&self, message: Message) {
        match self.inbox() {
            Some(inbox) => match inbox.deliver(message) {
                Ok(()) => Counters::add(&self.stats.received),
                Err(_) => Counters::add(&self.stats.dropped_inbox_full),
            },
            None => Counters::add(&self.stats.dropped_inbox_full),
        }
    }

    fn endpoint(&self, address: &str) -> Result<Endpoint, GrpcError> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let uri = if address.contains("://") {
            address.to_string()
        } else {
            format!("{scheme}://{address}")
        };
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| GrpcError::Address {
                address: address.to_string(),
                detail: e.to_string(),
            })?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            let host = tls.server_name.clone().unwrap_or_else(|| host_of(address));
            let client_tls = ClientTlsConfig::new()
                .ca_certificate(tls.ca.clone())
                .identity(tls.identity.clone())
                .domain_name(host);
            endpoint = endpoint
                .tls_config(client_tls)
                .map_err(|e| GrpcError::Tls {
                    detail: e.to_string(),
                })?;
        }
        Ok(endpoint)
    }

    pub(crate) async fn connect(&self, address: &str) -> Result<PeerClient<Channel>, GrpcError> {
        let channel = self
            .endpoint(address)?
            .connect()
            .await
            .map_err(|e| GrpcError::Connect {
                address: address.to_string(),
                detail: error_chain(&e),
            })?;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes);
        if self.config.compression {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        Ok(client)
    }
}

/// HTTP/2 flow-control windows. The defaults (64 KiB) stall a pipelined append stream after
/// one large message per round trip.
pub(crate) const STREAM_WINDOW: u32 = 8 << 20;
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;

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

/// The host part of `host:port` (or of a URI).
fn host_of(address: &str) -> String {
    let rest = address.split("://").last().unwrap_or(address);
    let hostport = rest.split('/').next().unwrap_or(rest);
    if let Some(stripped) = hostport.strip_prefix('[') {
        return stripped.split(']').next().unwrap_or(stripped).to_string();
    }
    hostport
        .rsplit_once(':')
        .map_or(hostport, |(h, _)| h)
        .to_string()
}

/// A tonic error with its sources, which is where the useful part usually is.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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
            (None, Some(path)) => Some(crate::read_secret(path)?),
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
        Ok(self.shared.common.endpoint(address)?.connect_lazy())
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
        data: Bytes,
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

    #[test]
    fn host_of_strips_port_scheme_and_brackets() {
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("https://node-1.example:7000"), "node-1.example");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
