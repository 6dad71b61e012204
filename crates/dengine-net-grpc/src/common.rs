//! [`Common`]: what every task of one transport shares (configuration, credentials,
//! counters, the inbox) and the checks every message from a peer passes before it reaches
//! the inbox; also the refusal that tells a removed node it was removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dengine_core::{Inbox, Message, MessageBody, NodeId};
use parking_lot::{Mutex, RwLock};
use tonic::Status;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::auth::{PeerAuth, SECRET_METADATA};
use crate::config::GrpcConfig;
use crate::convert::{self, DecodeLimits};
use crate::cork::CorkedConnector;
use crate::error::GrpcError;
use crate::listener::{CONNECTION_WINDOW, STREAM_WINDOW, ServerTls};
use crate::proto::pb;
use crate::proto::pb::peer_client::PeerClient;
use crate::stats::Counters;

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

    pub(crate) fn endpoint(&self, address: &str) -> Result<Endpoint, GrpcError> {
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
            .connect_with_connector(CorkedConnector)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_scheme_and_brackets() {
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("https://node-1.example:7000"), "node-1.example");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
