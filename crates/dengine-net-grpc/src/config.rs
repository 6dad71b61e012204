//! [`GrpcConfig`]: how the transport connects, queues, streams snapshots and secures traffic.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use dengine_core::NodeId;

use crate::listener::ListenerLimits;

/// Settings of one node's gRPC transport (client and server side).
#[derive(Clone, Debug)]
pub struct GrpcConfig {
    /// This node's id.
    pub id: NodeId,
    /// The cluster id every request carries; requests for another cluster are refused.
    pub cluster_id: u64,
    /// This node's incarnation (a random number chosen when its data directory was created),
    /// sent with every request so that peers notice a member that came back with new storage
    /// under an old id. Default 0 (unknown).
    pub incarnation: u64,
    /// Messages queued per peer; when full, new messages to that peer are dropped and counted.
    /// Default 4096.
    pub peer_queue_len: usize,
    /// Timeout for establishing a connection. Default 1 s.
    pub connect_timeout: Duration,
    /// First reconnect delay after a failure; doubles per failure up to
    /// [`reconnect_max`](Self::reconnect_max), each delay with ±50 % jitter. Default 50 ms.
    pub reconnect_initial: Duration,
    /// Largest reconnect delay. Default 2 s.
    pub reconnect_max: Duration,
    /// Timeout of one election (`Deliver`) call. Default 1 s.
    pub deliver_timeout: Duration,
    /// Compress append streams and snapshots with gzip. Default off (best on a fast LAN).
    pub compression: bool,
    /// Largest message accepted or sent (bytes, encoded). Default 64 MiB.
    pub max_message_bytes: usize,
    /// Snapshot chunk size. Default 1 MiB.
    pub snapshot_chunk_bytes: usize,
    /// Longest wait for one snapshot chunk to be taken by the stream or to arrive (not a
    /// whole-snapshot timeout: large snapshots take as long as they take). Default 10 s.
    pub snapshot_chunk_timeout: Duration,
    /// Largest snapshot this node accepts. Default 4 GiB.
    pub max_snapshot_bytes: u64,
    /// Where snapshots being received are written while they arrive (not held in memory);
    /// created if missing. Default: a directory under the system's temporary directory.
    pub snapshot_spool_dir: Option<PathBuf>,
    /// Bytes of all snapshots being received at once, together; an upload that would pass
    /// it is refused (the sender retries later). Default 8 GiB.
    pub max_snapshot_spool_bytes: u64,
    /// A partly received snapshot whose sender has not continued it for this long is
    /// deleted. Default 120 s.
    pub snapshot_abandon_after: Duration,
    /// Attempts (first try included) to stream one snapshot, resuming where the receiver
    /// stopped. Default 5.
    pub snapshot_attempts: u32,
    /// TLS; plaintext when `None`. With
    /// [`require_client_cert`](TlsConfig::require_client_cert), every peer request must come
    /// with a certificate that names the member it claims to come from (see
    /// [`member_names`](Self::member_names) and the [`auth`](crate::auth) module).
    pub tls: Option<TlsConfig>,
    /// The certificate name that identifies each member (Common Name or DNS name), when the
    /// `member-<id>` convention does not fit. When set, a member missing from the map is
    /// refused. Default empty (the convention).
    pub member_names: BTreeMap<NodeId, String>,
    /// A secret every peer request must carry (and every request this node sends carries);
    /// keeps out blind injection where TLS is not used. Default none.
    pub cluster_secret: Option<String>,
    /// Limits of the peer listener. Default [`ListenerLimits::for_peers`].
    pub listener: ListenerLimits,
    /// Testing only (feature `fault-injection`): the next this-many snapshot chunks sent are
    /// corrupted after their checksum was computed, to exercise detection and resume.
    #[cfg(feature = "fault-injection")]
    pub corrupt_snapshot_chunks: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl GrpcConfig {
    /// Defaults for node `id` in cluster `cluster_id`.
    pub fn new(id: NodeId, cluster_id: u64) -> Self {
        GrpcConfig {
            id,
            cluster_id,
            incarnation: 0,
            peer_queue_len: 4096,
            connect_timeout: Duration::from_secs(1),
            reconnect_initial: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            deliver_timeout: Duration::from_secs(1),
            compression: false,
            max_message_bytes: 64 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_chunk_timeout: Duration::from_secs(10),
            max_snapshot_bytes: 4 << 30,
            snapshot_spool_dir: None,
            max_snapshot_spool_bytes: 8 << 30,
            snapshot_abandon_after: Duration::from_secs(120),
            snapshot_attempts: 5,
            tls: None,
            member_names: BTreeMap::new(),
            cluster_secret: None,
            listener: ListenerLimits::for_peers(),
            #[cfg(feature = "fault-injection")]
            corrupt_snapshot_chunks: Default::default(),
        }
    }
}

/// TLS settings: PEM files for this node's certificate and key, and the CA that signed the
/// peers' certificates. Mutual TLS when [`require_client_cert`](Self::require_client_cert) is
/// set: the server then refuses peers without a certificate signed by `ca`, and the client
/// presents its own certificate.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// The CA certificate (PEM) that signed the peers' certificates.
    pub ca: PathBuf,
    /// Refuse peers that present no valid client certificate.
    pub require_client_cert: bool,
    /// Name to verify in the peers' server certificates; default: the host of the peer address.
    pub server_name: Option<String>,
}
