//! [`GrpcConfig`]: how the transport connects, queues, streams snapshots and secures traffic.
//!
//! The configuration derives serde: a server embeds it as the `[network]` section of its
//! settings file as it is (durations as `*_ms` integers, compression as `"none"`/`"gzip"`),
//! and [`GrpcConfig::validate`] names every bad field.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use dengine_core::{ConfigError, ConfigProblem, NodeId};
use serde::{Deserialize, Serialize};

/// Largest duration setting (one day): deadlines are `now + duration`.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Settings of one node's gRPC transport (client and server side).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// This node's id (from the node's identity, not the `[network]` section).
    #[serde(skip)]
    pub id: NodeId,
    /// The cluster id every request carries; requests for another cluster are refused.
    #[serde(skip)]
    pub cluster_id: u64,
    /// This node's incarnation (a random number chosen when its data directory was created),
    /// sent with every request so that peers notice a member that came back with new storage
    /// under an old id. Default 0 (unknown).
    #[serde(skip)]
    pub incarnation: u64,
    /// Messages queued per peer; when full, new messages to that peer are dropped and counted.
    /// Default 4096.
    pub peer_queue_len: usize,
    /// Timeout for establishing a connection. Default 1 s.
    #[serde(rename = "connect_timeout_ms", with = "millis")]
    pub connect_timeout: Duration,
    /// First reconnect delay after a failure; doubles per failure up to
    /// [`reconnect_max`](Self::reconnect_max), each delay with ±50 % jitter. Default 50 ms.
    #[serde(rename = "reconnect_initial_ms", with = "millis")]
    pub reconnect_initial: Duration,
    /// Largest reconnect delay. Default 2 s.
    #[serde(rename = "reconnect_max_ms", with = "millis")]
    pub reconnect_max: Duration,
    /// Timeout of one election (`Deliver`) call. Default 1 s.
    #[serde(rename = "deliver_timeout_ms", with = "millis")]
    pub deliver_timeout: Duration,
    /// Compress append streams and snapshots with gzip (`compression = "gzip"`). Default off
    /// (`"none"`; best on a fast LAN).
    #[serde(with = "gzip")]
    pub compression: bool,
    /// Largest message accepted or sent (bytes, encoded). Default 64 MiB.
    pub max_message_bytes: usize,
    /// Snapshot chunk size. Default 1 MiB.
    pub snapshot_chunk_bytes: usize,
    /// Longest wait for one snapshot chunk to be taken by the stream or to arrive (not a
    /// whole-snapshot timeout: large snapshots take as long as they take). Default 10 s.
    #[serde(rename = "snapshot_chunk_timeout_ms", with = "millis")]
    pub snapshot_chunk_timeout: Duration,
    /// Largest snapshot this node accepts. Default 4 GiB.
    pub max_snapshot_bytes: u64,
    /// Where snapshots being received are written while they arrive (not held in memory);
    /// created if missing. Default: a directory under the system's temporary directory (a
    /// server sets `<data_dir>/incoming`).
    #[serde(skip)]
    pub snapshot_spool_dir: Option<PathBuf>,
    /// Bytes of all snapshots being received at once, together; an upload that would pass
    /// it is refused (the sender retries later). Default 8 GiB.
    pub max_snapshot_spool_bytes: u64,
    /// A partly received snapshot whose sender has not continued it for this long is
    /// deleted. Default 120 s.
    #[serde(rename = "snapshot_abandon_after_ms", with = "millis")]
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
    #[serde(with = "id_map")]
    pub member_names: BTreeMap<NodeId, String>,
    /// A file holding a secret (16+ printable ASCII characters on its first line) that every
    /// peer request must carry, and every request this node sends carries; keeps out blind
    /// injection where TLS is not used. Read by [`GrpcTransport::new`](crate::GrpcTransport::new).
    /// Default none.
    pub cluster_secret_file: Option<PathBuf>,
    /// The secret itself, for programs that do not keep it in a file; wins over
    /// [`cluster_secret_file`](Self::cluster_secret_file).
    #[serde(skip)]
    pub cluster_secret: Option<String>,
    /// Limits of the peer listener (`[network.listener]`). Default
    /// [`ListenerLimits::for_peers`].
    pub listener: ListenerLimits,
    /// Testing only (feature `fault-injection`): the next this-many snapshot chunks sent are
    /// corrupted after their checksum was computed, to exercise detection and resume.
    #[cfg(feature = "fault-injection")]
    #[serde(skip)]
    pub corrupt_snapshot_chunks: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for GrpcConfig {
    /// The defaults, for node 0 of cluster 0 (set both before use).
    fn default() -> Self {
        GrpcConfig::new(0, 0)
    }
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
            cluster_secret_file: None,
            cluster_secret: None,
            listener: ListenerLimits::for_peers(),
            #[cfg(feature = "fault-injection")]
            corrupt_snapshot_chunks: Default::default(),
        }
    }
}

impl GrpcConfig {
    /// Checks every field and reports all problems at once, each with its name (as in the
    /// `[network]` section), its value and what would be accepted. Does not read files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, value: &dyn ToString, allowed: &str| {
            problems.push(ConfigProblem::new(field, value.to_string(), allowed));
        };
        for (field, value) in [
            ("peer_queue_len", self.peer_queue_len as u64),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes as u64),
            ("max_snapshot_bytes", self.max_snapshot_bytes),
            ("max_snapshot_spool_bytes", self.max_snapshot_spool_bytes),
            ("snapshot_attempts", u64::from(self.snapshot_attempts)),
            (
                "listener.max_connections",
                self.listener.max_connections as u64,
            ),
            (
                "listener.max_concurrent_streams",
                u64::from(self.listener.max_concurrent_streams),
            ),
        ] {
            if value == 0 {
                bad(field, &0, ">= 1");
            }
        }
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&self.snapshot_chunk_bytes) {
            bad(
                "snapshot_chunk_bytes",
                &self.snapshot_chunk_bytes,
                "4096..=67108864 (4 KiB..=64 MiB)",
            );
        }
        for (field, value) in [
            ("connect_timeout_ms", self.connect_timeout),
            ("reconnect_initial_ms", self.reconnect_initial),
            ("reconnect_max_ms", self.reconnect_max),
            ("deliver_timeout_ms", self.deliver_timeout),
            ("snapshot_chunk_timeout_ms", self.snapshot_chunk_timeout),
            ("snapshot_abandon_after_ms", self.snapshot_abandon_after),
            (
                "listener.handshake_timeout_ms",
                self.listener.handshake_timeout,
            ),
            (
                "listener.keepalive_interval_ms",
                self.listener.keepalive_interval,
            ),
            (
                "listener.keepalive_timeout_ms",
                self.listener.keepalive_timeout,
            ),
        ] {
            if value.is_zero() {
                bad(field, &0, ">= 1");
            } else if value > MAX_DURATION {
                bad(field, &value.as_millis(), "<= 86400000 (one day)");
            }
        }
        if self.reconnect_initial > self.reconnect_max {
            bad(
                "reconnect_max_ms",
                &self.reconnect_max.as_millis(),
                &format!(
                    ">= reconnect_initial_ms ({})",
                    self.reconnect_initial.as_millis()
                ),
            );
        }
        if let Some(tls) = &self.tls {
            for p in tls.problems() {
                problems.push(ConfigProblem::new(
                    format!("tls.{}", p.field),
                    p.value,
                    p.allowed,
                ));
            }
            if tls.server_name.as_deref() == Some("") {
                problems.push(ConfigProblem::new(
                    "tls.server_name",
                    "\"\"",
                    "a DNS name, or leave it out to use the peer address's host",
                ));
            }
        }
        if !self.member_names.is_empty()
            && !self.tls.as_ref().is_some_and(|t| t.require_client_cert)
        {
            problems.push(ConfigProblem::new(
                "member_names",
                format!("{} names", self.member_names.len()),
                "only with tls.require_client_cert = true (names are checked in client \
                 certificates)",
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// Smallest allowed snapshot chunk: 4 KiB.
pub const MIN_CHUNK_BYTES: usize = 4 << 10;
/// Largest allowed snapshot chunk: 64 MiB.
pub const MAX_CHUNK_BYTES: usize = 64 << 20;

/// TLS settings of one listener (`[network.tls]` for peers; a server uses the same type for
/// its client and admin listeners): PEM files for this node's certificate and key, and the CA
/// whose certificates it trusts. Mutual TLS when
/// [`require_client_cert`](Self::require_client_cert) is set: the server then refuses clients
/// without a certificate signed by `ca` (for peers: one that also names the member), and as a
/// client this node presents its own certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// The CA certificate (PEM): for peers, the CA that signed the peers' certificates; for a
    /// client or admin listener, the CA whose client certificates are accepted.
    pub ca: PathBuf,
    /// Refuse clients that present no valid client certificate. Default false.
    pub require_client_cert: bool,
    /// Peers only: the name to verify in the peers' server certificates; default: the host of
    /// the peer address. (Listeners that only serve, like a client or admin listener, refuse
    /// it in their settings.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// The fields that are unusable without looking at the files (empty paths).
    pub fn problems(&self) -> Vec<ConfigProblem> {
        [("cert", &self.cert), ("key", &self.key), ("ca", &self.ca)]
            .into_iter()
            .filter(|(_, path)| path.as_os_str().is_empty())
            .map(|(field, _)| {
                ConfigProblem::new(field, "\"\"", "a path to a PEM file (required with TLS)")
            })
            .collect()
    }
}

/// Limits of one listener. The defaults suit a client listener; peers need fewer
/// connections (see [`ListenerLimits::for_peers`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerLimits {
    /// Open connections at most; more are closed as soon as they are accepted. Default 1024.
    pub max_connections: usize,
    /// Time from accept to a finished TLS handshake and HTTP/2 preface. Default 10 s.
    #[serde(rename = "handshake_timeout_ms", with = "millis")]
    pub handshake_timeout: Duration,
    /// How often an established connection is pinged (HTTP/2 PING). Default 30 s.
    #[serde(rename = "keepalive_interval_ms", with = "millis")]
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed. Default 20 s.
    #[serde(rename = "keepalive_timeout_ms", with = "millis")]
    pub keepalive_timeout: Duration,
    /// Requests (HTTP/2 streams) open at once on one connection. Default 1024.
    pub max_concurrent_streams: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_concurrent_streams: 1024,
        }
    }
}

impl ListenerLimits {
    /// Defaults for a peer listener: 256 connections (a member has a few per peer).
    pub fn for_peers() -> Self {
        ListenerLimits {
            max_connections: 256,
            ..Self::default()
        }
    }
}

/// Serde for a [`Duration`] stored as whole milliseconds (`*_ms` settings).
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the duration in milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Serde for the compression switch: `"none"` or `"gzip"`.
mod gzip {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(on: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if *on { "gzip" } else { "none" })
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match String::deserialize(d)?.as_str() {
            "gzip" => Ok(true),
            "none" => Ok(false),
            other => Err(D::Error::custom(format!(
                "unknown compression {other:?}, expected \"none\" or \"gzip\""
            ))),
        }
    }
}

/// Serde for an id → name map (`member_names`, a server's initial members): a table whose
/// keys are ids (`1 = "10.0.0.1:7000"`), or one string of comma-separated `id=value` pairs
/// (`"1=10.0.0.1:7000,2=10.0.0.2:7000"`, the form environment variables and flags use).
/// Ids must be numbers and appear once.
pub mod id_map {
    use std::collections::BTreeMap;
    use std::fmt;

    use dengine_core::NodeId;
    use serde::de::{Error, MapAccess, Visitor};
    use serde::{Deserializer, Serializer};

    const FORMAT: &str = "comma-separated id=value pairs, e.g. 1=10.0.0.1:7000,2=10.0.0.2:7000";

    /// Writes a table keyed by the ids as strings (TOML keys are strings).
    pub fn serialize<S: Serializer>(
        map: &BTreeMap<NodeId, String>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(id, v)| (id.to_string(), v)))
    }

    /// Reads a table or an `id=value,...` string.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<NodeId, String>, D::Error> {
        d.deserialize_any(IdMap)
    }

    /// Parses `1=a,2=b` (whitespace around items ignored; empty means no entries).
    pub fn parse(text: &str) -> Result<BTreeMap<NodeId, String>, String> {
        let mut map = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((id, value)) = item.split_once('=') else {
                return Err(format!("{FORMAT} (no '=' in {item:?})"));
            };
            let id = parse_id(id.trim()).map_err(|e| format!("{FORMAT} ({e})"))?;
            if let Some(first) = map.insert(id, value.trim().to_owned()) {
                return Err(format!(
                    "id {id} appears twice ({first} and {}); each member needs its own id",
                    value.trim()
                ));
            }
        }
        Ok(map)
    }

    fn parse_id(text: &str) -> Result<NodeId, String> {
        text.parse::<NodeId>()
            .map_err(|_| format!("id {text:?} is not a number"))
    }

    struct IdMap;

    impl<'de> Visitor<'de> for IdMap {
        type Value = BTreeMap<NodeId, String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a table of id = value, or {FORMAT}")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Self::Value, E> {
            parse(text).map_err(E::custom)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            while let Some((key, value)) = access.next_entry::<Key, String>()? {
                if map.insert(key.0, value).is_some() {
                    return Err(A::Error::custom(format!("id {} appears twice", key.0)));
                }
            }
            Ok(map)
        }
    }

    /// A map key: an id written as a number or as a string of digits.
    struct Key(NodeId);

    impl<'de> serde::Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct KeyVisitor;
            impl Visitor<'_> for KeyVisitor {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a member id (a number)")
                }
                fn visit_u64<E: Error>(self, v: u64) -> Result<Key, E> {
                    Ok(Key(v))
                }
                fn visit_i64<E: Error>(self, v: i64) -> Result<Key, E> {
                    NodeId::try_from(v)
                        .map(Key)
                        .map_err(|_| E::custom(format!("id {v} is negative")))
                }
                fn visit_str<E: Error>(self, v: &str) -> Result<Key, E> {
                    parse_id(v).map(Key).map_err(E::custom)
                }
            }
            d.deserialize_any(KeyVisitor)
        }
    }
}
