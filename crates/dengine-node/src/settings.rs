//! [`Settings`]: everything a node is configured with, in one struct.
//!
//! Every field has a default; a TOML file only needs the fields it changes. Times are in
//! milliseconds and sizes in bytes.
//!
//! [`Settings::load`] reads an optional TOML file, applies `DENGINE_<SECTION>__<FIELD>`
//! environment overrides and validates the result, reporting every bad field at once. The
//! reference of every setting is `docs/configuration.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dengine_core::NodeId;
use serde::{Deserialize, Serialize};

/// All settings of one node. Sections mirror the TOML file: `[node]`, `[raft]`, `[storage]`,
/// `[snapshot]`, `[network]`, `[client_api]`, `[admin]`, `[client]`, `[shutdown]`,
/// `[observability]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Identity and addresses.
    pub node: NodeSettings,
    /// Protocol timing and limits.
    pub raft: RaftSettings,
    /// The log store.
    pub storage: StorageSettings,
    /// Snapshot and compaction policy.
    pub snapshot: SnapshotSettings,
    /// Peer transport and the peer listener.
    pub network: NetworkSettings,
    /// The client listener (the application's API, `node.client_addr`).
    pub client_api: ClientApiSettings,
    /// The admin listener (`node.admin_addr`): who may administer the node.
    pub admin: AdminSettings,
    /// Client-facing limits.
    pub client: ClientSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
    /// Metrics and tracing export.
    pub observability: ObservabilitySettings,
}

/// Whether a node with an empty data directory founds a new cluster or joins an existing one
/// (etcd's `--initial-cluster-state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// Found the cluster of `node.initial_members` — unless one of them reports that the
    /// cluster already exists, in which case this node lost its data and must not start as
    /// if it had none (it refuses, naming the way to replace a member).
    #[default]
    New,
    /// Join a cluster that exists: start empty and wait for the leader, which must have added
    /// this node (under a new id) with a membership change.
    Existing,
}

/// `[node]`: who this node is and where it listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// This node's id, unique in the cluster; must not be 0. No default that works: 0 is
    /// refused by validation.
    pub id: NodeId,
    /// Identifies the cluster; every peer message carries it and a mismatch is refused, so
    /// two clusters on one network cannot mix. Default 1.
    pub cluster_id: u64,
    /// Address the peer listener binds: Raft messages, snapshots and the application's
    /// traffic between members. Only members should reach it. Default `127.0.0.1:7000`.
    pub listen_addr: String,
    /// Address other nodes use to reach this one's peer listener (recorded in the
    /// membership). Default: the listen address.
    pub advertise_addr: Option<String>,
    /// Address the client listener binds: the application's API (e.g. etcd's for
    /// `dengine-kv`). Default: none (the application serves no network API).
    pub client_addr: Option<String>,
    /// Address the admin listener binds (the `dengine.admin.v1.Admin` service: membership,
    /// leader transfer, snapshots). Default: none (no admin API over the network). An address
    /// that other hosts can reach needs `[admin]` credentials.
    pub admin_addr: Option<String>,
    /// Directory for the log store and snapshots. Default `./dengine-data`.
    pub data_dir: PathBuf,
    /// Initial members (id → peer address) when bootstrapping a new cluster, this node
    /// included. Ignored on restart. Default empty (join or restart).
    pub initial_members: BTreeMap<NodeId, String>,
    /// With an empty data directory: found the cluster (`new`) or join one (`existing`).
    /// Ignored once the data directory holds state. Default `new`.
    pub initial_cluster_state: ClusterState,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            id: 0,
            cluster_id: 1,
            listen_addr: "127.0.0.1:7000".into(),
            advertise_addr: None,
            client_addr: None,
            admin_addr: None,
            data_dir: PathBuf::from("./dengine-data"),
            initial_members: BTreeMap::new(),
            initial_cluster_state: ClusterState::New,
        }
    }
}

/// `[raft]`: protocol timing and limits (see `dengine_core::Config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    /// Length of one logical tick of the core. Default 50.
    pub tick_ms: u64,
    /// Base election timeout; the real timeout is random in `[t, 2t)`. A multiple of
    /// `tick_ms`. Default 500.
    pub election_timeout_ms: u64,
    /// Leader heartbeat interval; below the election timeout. Default 100.
    pub heartbeat_interval_ms: u64,
    /// Pre-vote (thesis §9.6). Default true.
    pub pre_vote: bool,
    /// Check-quorum and leader stickiness (thesis §6.2, §4.2.3); needed for lease reads.
    /// Default true.
    pub check_quorum: bool,
    /// Clock-drift margin subtracted from the lease. Default 100.
    pub lease_drift_ms: u64,
    /// Append messages in flight per follower. Default 256.
    pub max_inflight_messages: usize,
    /// Soft limit on entry bytes per append message. Default 1 MiB.
    pub max_message_bytes: u64,
    /// Largest command a client may propose. Default 1 MiB.
    pub max_proposal_bytes: u64,
    /// Appended-but-uncommitted bytes after which proposals are refused. Default 64 MiB.
    pub max_uncommitted_bytes: u64,
    /// Soft limit on committed bytes handed to the state machine per batch. Default 4 MiB.
    pub max_apply_batch_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_ms: 50,
            election_timeout_ms: 500,
            heartbeat_interval_ms: 100,
            pre_vote: true,
            check_quorum: true,
            lease_drift_ms: 100,
            max_inflight_messages: 256,
            max_message_bytes: 1 << 20,
            max_proposal_bytes: 1 << 20,
            max_uncommitted_bytes: 64 << 20,
            max_apply_batch_bytes: 4 << 20,
        }
    }
}

/// `[storage]`: the log store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// Sync the log to disk before acknowledging. Turning it off loses acknowledged writes on
    /// power loss or SIGKILL of a majority; only for tests and benchmarks. Default true.
    pub fsync: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings { fsync: true }
    }
}

/// `[snapshot]`: when to snapshot and compact, and how snapshots travel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSettings {
    /// Take a snapshot after this many entries were applied since the last one (0 = never by
    /// count). Default 100 000.
    pub every_entries: u64,
    /// Take a snapshot after this many bytes were applied since the last one (0 = never by
    /// size). Default 256 MiB.
    pub every_bytes: u64,
    /// Entries kept behind a snapshot for followers that lag a little. Default 1024.
    pub trailing_entries: u64,
    /// Chunk size when streaming a snapshot to a peer. Default 1 MiB.
    pub chunk_bytes: usize,
    /// Longest wait for one chunk (not for the whole snapshot). Default 10 000.
    pub chunk_timeout_ms: u64,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            every_entries: 100_000,
            every_bytes: 256 << 20,
            trailing_entries: 1024,
            chunk_bytes: 1 << 20,
            chunk_timeout_ms: 10_000,
        }
    }
}

/// Compression of append and snapshot streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression (default; best on a fast LAN).
    #[default]
    None,
    /// gzip.
    Gzip,
}

/// TLS of one listener (`[network.tls]` for peers, `[client_api.tls]`, `[admin.tls]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain of this node.
    pub cert: PathBuf,
    /// PEM private key of this node.
    pub key: PathBuf,
    /// PEM CA certificate: for peers, the CA that signed the peers' certificates; for the
    /// client and admin listeners, the CA whose client certificates are accepted.
    pub ca: PathBuf,
    /// Require clients to present a certificate signed by `ca` (mutual TLS). For peers, the
    /// certificate must also name the member a request comes from (`member-<id>` as Common
    /// Name or DNS name, or `network.member_names`). Default false.
    pub require_client_cert: bool,
    /// Peers only: the name to expect in peers' server certificates; default: the host part
    /// of the peer address.
    pub server_name: Option<String>,
}

/// `[network]`: the peer transport.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSettings {
    /// Messages queued per peer before new ones are dropped (and counted). Default 4096.
    pub peer_queue_len: usize,
    /// Timeout for establishing a connection. Default 1000.
    pub connect_timeout_ms: u64,
    /// First reconnect delay; doubles per failure, with jitter. Default 50.
    pub reconnect_initial_ms: u64,
    /// Largest reconnect delay. Default 2000.
    pub reconnect_max_ms: u64,
    /// Compression for append and snapshot streams. Default none.
    pub compression: Compression,
    /// Largest peer message accepted. Default 64 MiB.
    pub max_message_bytes: usize,
    /// TLS for peer traffic; plaintext when absent.
    pub tls: Option<TlsSettings>,
    /// The certificate name of each member (id → Common Name or DNS name), when the
    /// `member-<id>` convention does not fit. Needs `network.tls.require_client_cert`.
    /// Default empty.
    pub member_names: BTreeMap<NodeId, String>,
    /// A file holding a secret (16+ printable ASCII characters) that every peer request must
    /// carry: keeps out blind injection where peer TLS is not used. Default none.
    pub cluster_secret_file: Option<PathBuf>,
    /// Connections the peer listener accepts at once. Default 256.
    pub max_connections: usize,
    /// Time a new connection (any listener) has to finish its TLS handshake and start
    /// HTTP/2. Default 10 000.
    pub handshake_timeout_ms: u64,
    /// How often established connections (any listener) are pinged. Default 30 000.
    pub keepalive_interval_ms: u64,
    /// How long a ping may go unanswered before the connection is closed. Default 20 000.
    pub keepalive_timeout_ms: u64,
    /// Requests open at once on one connection (any listener). Default 1024.
    pub max_concurrent_streams: u32,
    /// Bytes of snapshots being received at once, spooled to `<data_dir>/incoming`.
    /// Default 8 GiB.
    pub max_snapshot_spool_bytes: u64,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            peer_queue_len: 4096,
            connect_timeout_ms: 1000,
            reconnect_initial_ms: 50,
            reconnect_max_ms: 2000,
            compression: Compression::None,
            max_message_bytes: 64 << 20,
            tls: None,
            member_names: BTreeMap::new(),
            cluster_secret_file: None,
            max_connections: 256,
            handshake_timeout_ms: 10_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 20_000,
            max_concurrent_streams: 1024,
            max_snapshot_spool_bytes: 8 << 30,
        }
    }
}

/// `[client_api]`: the client listener (`node.client_addr`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientApiSettings {
    /// TLS for clients; plaintext when absent. With `require_client_cert`, only clients with
    /// a certificate of `ca` connect.
    pub tls: Option<TlsSettings>,
    /// Connections the client listener accepts at once. Default 1024.
    pub max_connections: usize,
}

impl Default for ClientApiSettings {
    fn default() -> Self {
        ClientApiSettings {
            tls: None,
            max_connections: 1024,
        }
    }
}

/// `[admin]`: who may use the admin listener (`node.admin_addr`). Operators have rights
/// through a client certificate of `admin.tls.ca` (with `require_client_cert`), through the
/// token of `token_file`, or by being on this host when the address is a loopback one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// TLS for the admin listener; plaintext when absent.
    pub tls: Option<TlsSettings>,
    /// A file holding a token (16+ printable ASCII characters) that admin requests must send
    /// as `authorization: Bearer <token>`. Default none.
    pub token_file: Option<PathBuf>,
}

/// `[client]`: limits on client requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSettings {
    /// How long a proposal may wait to be applied before the caller gets a timeout (outcome
    /// unknown). Default 5000.
    pub propose_timeout_ms: u64,
    /// How long a linearizable or lease read may wait. Default 5000.
    pub read_timeout_ms: u64,
    /// Proposals and reads waiting at once; more are refused with a "busy" error. Default
    /// 10 000.
    pub max_pending: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            propose_timeout_ms: 5000,
            read_timeout_ms: 5000,
            max_pending: 10_000,
        }
    }
}

/// `[shutdown]`: graceful shutdown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long a leader tries to hand leadership over before stopping. Default 2000.
    pub transfer_timeout_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings {
            transfer_timeout_ms: 2000,
        }
    }
}

/// `[observability]`: metrics and traces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilitySettings {
    /// Serve Prometheus metrics at `http://<addr>/metrics`. Off by default.
    pub metrics_addr: Option<String>,
    /// Export traces by OTLP/gRPC to this endpoint (e.g. `http://127.0.0.1:4317`). Off by
    /// default.
    pub otlp_endpoint: Option<String>,
}

impl Settings {
    /// The core's [`Config`](dengine_core::Config) for these settings: times are converted
    /// from milliseconds to ticks of `raft.tick_ms` (rounded up, at least one tick).
    /// `seed` seeds the election jitter; pass something that differs between runs (the
    /// runtime uses the clock).
    pub fn core_config(&self, seed: u64) -> dengine_core::Config {
        let tick = self.raft.tick_ms.max(1);
        let ticks = |ms: u64| ms.div_ceil(tick).max(1);
        let r = &self.raft;
        dengine_core::Config {
            id: self.node.id,
            election_timeout_ticks: ticks(r.election_timeout_ms),
            heartbeat_interval_ticks: ticks(r.heartbeat_interval_ms),
            pre_vote: r.pre_vote,
            check_quorum: r.check_quorum,
            max_inflight_messages: r.max_inflight_messages,
            max_message_bytes: r.max_message_bytes,
            max_proposal_bytes: r.max_proposal_bytes,
            max_uncommitted_bytes: r.max_uncommitted_bytes,
            max_apply_batch_bytes: r.max_apply_batch_bytes,
            lease_drift_ticks: ticks(r.lease_drift_ms),
            snapshot_trailing_entries: self.snapshot.trailing_entries,
            seed,
            allow_node_id_reuse: false,
        }
    }
}

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "DENGINE_";

/// Variables that start with [`ENV_PREFIX`] but are not settings (the binary's config-file
/// path and log filter); [`Settings::apply_env`] ignores them instead of refusing them.
pub const RESERVED_ENV_VARS: &[&str] = &["DENGINE_CONFIG", "DENGINE_LOG"];

/// Headroom that `network.max_message_bytes` must leave above the largest payload one peer
/// message carries (entry or chunk bytes), for headers and framing: 64 KiB.
pub const MESSAGE_HEADROOM_BYTES: usize = 64 << 10;

/// Smallest allowed `snapshot.chunk_bytes`: 4 KiB.
pub const MIN_CHUNK_BYTES: usize = 4 << 10;

/// Largest allowed `snapshot.chunk_bytes`: 64 MiB.
pub const MAX_CHUNK_BYTES: usize = 64 << 20;

/// Largest allowed `raft.tick_ms`.
pub const MAX_TICK_MS: u64 = 1000;

/// Largest value of any `*_ms` duration setting (one day).
pub const MAX_DURATION_MS: u64 = 86_400_000;

/// Every setting as a dotted path (`section.field`, `network.tls.cert`), in file order. The
/// environment variable of a path is [`env_var_name`] of it.
pub const SETTING_PATHS: &[&str] = &[
    "node.id",
    "node.cluster_id",
    "node.listen_addr",
    "node.advertise_addr",
    "node.client_addr",
    "node.admin_addr",
    "node.data_dir",
    "node.initial_members",
    "node.initial_cluster_state",
    "raft.tick_ms",
    "raft.election_timeout_ms",
    "raft.heartbeat_interval_ms",
    "raft.pre_vote",
    "raft.check_quorum",
    "raft.lease_drift_ms",
    "raft.max_inflight_messages",
    "raft.max_message_bytes",
    "raft.max_proposal_bytes",
    "raft.max_uncommitted_bytes",
    "raft.max_apply_batch_bytes",
    "storage.fsync",
    "snapshot.every_entries",
    "snapshot.every_bytes",
    "snapshot.trailing_entries",
    "snapshot.chunk_bytes",
    "snapshot.chunk_timeout_ms",
    "network.peer_queue_len",
    "network.connect_timeout_ms",
    "network.reconnect_initial_ms",
    "network.reconnect_max_ms",
    "network.compression",
    "network.max_message_bytes",
    "network.tls.cert",
    "network.tls.key",
    "network.tls.ca",
    "network.tls.require_client_cert",
    "network.tls.server_name",
    "network.member_names",
    "network.cluster_secret_file",
    "network.max_connections",
    "network.handshake_timeout_ms",
    "network.keepalive_interval_ms",
    "network.keepalive_timeout_ms",
    "network.max_concurrent_streams",
    "network.max_snapshot_spool_bytes",
    "client_api.tls.cert",
    "client_api.tls.key",
    "client_api.tls.ca",
    "client_api.tls.require_client_cert",
    "client_api.max_connections",
    "admin.tls.cert",
    "admin.tls.key",
    "admin.tls.ca",
    "admin.tls.require_client_cert",
    "admin.token_file",
    "client.propose_timeout_ms",
    "client.read_timeout_ms",
    "client.max_pending",
    "shutdown.transfer_timeout_ms",
    "observability.metrics_addr",
    "observability.otlp_endpoint",
];

/// The environment variable that overrides the setting at `path`: `raft.tick_ms` →
/// `DENGINE_RAFT__TICK_MS`, `network.tls.cert` → `DENGINE_NETWORK__TLS__CERT`.
pub fn env_var_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "__").to_ascii_uppercase()
    )
}

/// One thing wrong with the settings: where, the value found, and what would be accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsProblem {
    /// A field path such as `raft.election_timeout_ms`, or an environment variable such as
    /// `DENGINE_RAFT__TICK_MS`.
    pub field: String,
    /// The offending value as given (strings from the environment are quoted).
    pub value: String,
    /// What would be accepted instead.
    pub allowed: String,
}

impl SettingsProblem {
    fn new(field: impl Into<String>, value: impl ToString, allowed: impl Into<String>) -> Self {
        SettingsProblem {
            field: field.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

impl fmt::Display for SettingsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.allowed)
    }
}

/// Why settings could not be loaded. Displays one line per problem.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The settings file could not be read.
    #[error("cannot read settings file {}: {source}; check the path and its permissions", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The settings file is not valid TOML, has an unknown field, or a value of the wrong type.
    #[error("invalid settings file {origin}: {message}")]
    Parse {
        /// The file (or `<string>` for [`Settings::from_toml_str`]).
        origin: String,
        /// The TOML error, with line, column and field name.
        message: String,
    },
    /// One or more `DENGINE_*` environment variables are unknown or do not parse.
    #[error(
        "{}",
        list("invalid DENGINE_* environment overrides, fix or unset them", problems)
    )]
    Env {
        /// Every bad variable.
        problems: Vec<SettingsProblem>,
    },
    /// One or more settings are out of range or inconsistent.
    #[error("{}", list("invalid settings", problems))]
    Invalid {
        /// Every bad field.
        problems: Vec<SettingsProblem>,
    },
}

impl SettingsError {
    /// The individual problems (empty for [`Read`](Self::Read) and [`Parse`](Self::Parse)).
    pub fn problems(&self) -> &[SettingsProblem] {
        match self {
            SettingsError::Env { problems } | SettingsError::Invalid { problems } => problems,
            SettingsError::Read { .. } | SettingsError::Parse { .. } => &[],
        }
    }
}

fn list(title: &str, problems: &[SettingsProblem]) -> String {
    let mut out = format!("{title} ({} problem", problems.len());
    if problems.len() != 1 {
        out.push('s');
    }
    out.push_str("):");
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
    }
    out
}

impl Settings {
    /// Parses settings from TOML text. Missing fields keep their defaults; unknown fields are
    /// refused. Does not apply environment overrides and does not [`validate`](Self::validate).
    pub fn from_toml_str(text: &str) -> Result<Self, SettingsError> {
        Self::parse_toml(text, "<string>")
    }

    fn parse_toml(text: &str, origin: &str) -> Result<Self, SettingsError> {
        toml::from_str(text).map_err(|e| SettingsError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Loads the settings of a node: the TOML file at `path` (defaults when `None`), then the
    /// `DENGINE_*` variables of the process environment (see [`apply_env`](Self::apply_env)),
    /// then [`validate`](Self::validate).
    pub fn load(path: Option<&Path>) -> Result<Self, SettingsError> {
        let settings = Self::load_unvalidated(path)?;
        settings.validate()?;
        Ok(settings)
    }

    /// [`load`](Self::load) without the final [`validate`](Self::validate): for programs
    /// that apply their own overrides (command-line flags) on top and validate afterwards.
    pub fn load_unvalidated(path: Option<&Path>) -> Result<Self, SettingsError> {
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let k = k.to_string_lossy().into_owned();
                k.starts_with(ENV_PREFIX)
                    .then(|| (k, v.to_string_lossy().into_owned()))
            })
            .collect();
        let mut settings = Self::from_file_or_default(path)?;
        settings.apply_env(env)?;
        Ok(settings)
    }

    /// The TOML file at `path` parsed, or the defaults when `None`.
    fn from_file_or_default(path: Option<&Path>) -> Result<Self, SettingsError> {
        let Some(path) = path else {
            return Ok(Settings::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_toml(&text, &path.display().to_string())
    }

    /// [`load`](Self::load) with the environment given explicitly (for tests and embedders);
    /// variables without the `DENGINE_` prefix are ignored.
    pub fn load_with_env<I, K, V>(path: Option<&Path>, env: I) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut settings = Self::from_file_or_default(path)?;
        settings.apply_env(env)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Applies environment overrides: `DENGINE_<SECTION>__<FIELD>` (upper case, a double
    /// underscore between path parts) sets `section.field`, e.g. `DENGINE_RAFT__TICK_MS=20`,
    /// `DENGINE_NETWORK__TLS__CERT=/etc/dengine/node.pem`,
    /// `DENGINE_NODE__INITIAL_MEMBERS=1=10.0.0.1:7000,2=10.0.0.2:7000`. An empty value unsets
    /// an optional setting. Setting any `network.tls` field enables TLS.
    ///
    /// Variables without the prefix, and [`RESERVED_ENV_VARS`], are ignored; any other
    /// `DENGINE_*` variable that is not a setting is an error (typo protection). All bad
    /// variables are reported together; on error `self` may be partly updated.
    pub fn apply_env<I, K, V>(&mut self, env: I) -> Result<(), SettingsError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !RESERVED_ENV_VARS.contains(&k.as_str()))
            .collect();
        vars.sort();
        let mut problems = Vec::new();
        for (var, value) in &vars {
            if let Err(p) = self.set_from_env(var, value) {
                problems.push(p);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Env { problems })
        }
    }

    fn set_from_env(&mut self, var: &str, value: &str) -> Result<(), SettingsProblem> {
        let rest = var.strip_prefix(ENV_PREFIX).unwrap_or(var);
        let path = rest
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .join(".");
        let known = SETTING_PATHS.contains(&path.as_str());
        if !known || rest != rest.to_ascii_uppercase() {
            return Err(unknown_env(var, value, &path, known));
        }
        let v = EnvValue {
            var,
            path: &path,
            value,
        };
        let n = &mut self.node;
        let r = &mut self.raft;
        let sn = &mut self.snapshot;
        let net = &mut self.network;
        let c = &mut self.client;
        let o = &mut self.observability;
        match path.as_str() {
            "node.id" => n.id = v.num()?,
            "node.cluster_id" => n.cluster_id = v.num()?,
            "node.listen_addr" => n.listen_addr = value.to_owned(),
            "node.advertise_addr" => n.advertise_addr = v.opt_string(),
            "node.client_addr" => n.client_addr = v.opt_string(),
            "node.admin_addr" => n.admin_addr = v.opt_string(),
            "node.data_dir" => n.data_dir = PathBuf::from(value),
            "node.initial_members" => n.initial_members = v.members()?,
            "node.initial_cluster_state" => n.initial_cluster_state = v.cluster_state()?,
            "raft.tick_ms" => r.tick_ms = v.num()?,
            "raft.election_timeout_ms" => r.election_timeout_ms = v.num()?,
            "raft.heartbeat_interval_ms" => r.heartbeat_interval_ms = v.num()?,
            "raft.pre_vote" => r.pre_vote = v.bool()?,
            "raft.check_quorum" => r.check_quorum = v.bool()?,
            "raft.lease_drift_ms" => r.lease_drift_ms = v.num()?,
            "raft.max_inflight_messages" => r.max_inflight_messages = v.num()?,
            "raft.max_message_bytes" => r.max_message_bytes = v.num()?,
            "raft.max_proposal_bytes" => r.max_proposal_bytes = v.num()?,
            "raft.max_uncommitted_bytes" => r.max_uncommitted_bytes = v.num()?,
            "raft.max_apply_batch_bytes" => r.max_apply_batch_bytes = v.num()?,
            "storage.fsync" => self.storage.fsync = v.bool()?,
            "snapshot.every_entries" => sn.every_entries = v.num()?,
            "snapshot.every_bytes" => sn.every_bytes = v.num()?,
            "snapshot.trailing_entries" => sn.trailing_entries = v.num()?,
            "snapshot.chunk_bytes" => sn.chunk_bytes = v.num()?,
            "snapshot.chunk_timeout_ms" => sn.chunk_timeout_ms = v.num()?,
            "network.peer_queue_len" => net.peer_queue_len = v.num()?,
            "network.connect_timeout_ms" => net.connect_timeout_ms = v.num()?,
            "network.reconnect_initial_ms" => net.reconnect_initial_ms = v.num()?,
            "network.reconnect_max_ms" => net.reconnect_max_ms = v.num()?,
            "network.compression" => net.compression = v.compression()?,
            "network.max_message_bytes" => net.max_message_bytes = v.num()?,
            tls_path if tls_path.starts_with("network.tls.") => {
                set_tls(&mut net.tls, tls_path, &v)?
            }
            "network.member_names" => net.member_names = v.members()?,
            "network.cluster_secret_file" => {
                net.cluster_secret_file = v.opt_string().map(PathBuf::from)
            }
            "network.max_connections" => net.max_connections = v.num()?,
            "network.handshake_timeout_ms" => net.handshake_timeout_ms = v.num()?,
            "network.keepalive_interval_ms" => net.keepalive_interval_ms = v.num()?,
            "network.keepalive_timeout_ms" => net.keepalive_timeout_ms = v.num()?,
            "network.max_concurrent_streams" => net.max_concurrent_streams = v.num()?,
            "network.max_snapshot_spool_bytes" => net.max_snapshot_spool_bytes = v.num()?,
            "client_api.max_connections" => self.client_api.max_connections = v.num()?,
            "admin.token_file" => self.admin.token_file = v.opt_string().map(PathBuf::from),
            tls_path if tls_path.starts_with("client_api.tls.") => {
                set_tls(&mut self.client_api.tls, tls_path, &v)?
            }
            tls_path if tls_path.starts_with("admin.tls.") => {
                set_tls(&mut self.admin.tls, tls_path, &v)?
            }
            "client.propose_timeout_ms" => c.propose_timeout_ms = v.num()?,
            "client.read_timeout_ms" => c.read_timeout_ms = v.num()?,
            "client.max_pending" => c.max_pending = v.num()?,
            "shutdown.transfer_timeout_ms" => self.shutdown.transfer_timeout_ms = v.num()?,
            "observability.metrics_addr" => o.metrics_addr = v.opt_string(),
            "observability.otlp_endpoint" => o.otlp_endpoint = v.opt_string(),
            _ => return Err(unknown_env(var, value, &path, false)),
        }
        Ok(())
    }

    /// Checks every field and reports all problems at once, each with its field path, its
    /// value and what would be accepted. Includes the core's own checks
    /// ([`dengine_core::Config::validate`]) on [`core_config`](Self::core_config), reported
    /// under the settings' field names. Does not touch the file system (see
    /// [`check_files`](Self::check_files)).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut problems: Vec<SettingsProblem> = Vec::new();
        let mut bad = |field: &str, value: &dyn fmt::Display, allowed: String| {
            problems.push(SettingsProblem::new(field, value, allowed));
        };
        let n = &self.node;
        if n.id == 0 {
            bad(
                "node.id",
                &0,
                "any id except 0 (1, 2, ...), unique in the cluster".into(),
            );
        }
        if n.listen_addr.parse::<SocketAddr>().is_err() {
            bad(
                "node.listen_addr",
                &quoted(&n.listen_addr),
                "an IP socket address such as 0.0.0.0:7000 or [::1]:7000 (no host names)".into(),
            );
        }
        if let Some(addr) = &n.advertise_addr
            && !is_host_port(addr)
        {
            bad(
                "node.advertise_addr",
                &quoted(addr),
                "host:port with a port in 1..=65535, e.g. node1.example.com:7000 or \
                 10.0.0.1:7000 (IPv6 in brackets)"
                    .into(),
            );
        }
        for (field, addr) in [
            ("node.client_addr", &n.client_addr),
            ("node.admin_addr", &n.admin_addr),
        ] {
            if let Some(addr) = addr
                && addr.parse::<SocketAddr>().is_err()
            {
                bad(
                    field,
                    &quoted(addr),
                    "an IP socket address such as 127.0.0.1:2379 (no host names)".into(),
                );
            }
        }
        if let Some(Ok(addr)) = n.admin_addr.as_ref().map(|a| a.parse::<SocketAddr>())
            && !addr.ip().is_loopback()
            && self.admin.token_file.is_none()
            && !self
                .admin
                .tls
                .as_ref()
                .is_some_and(|t| t.require_client_cert)
        {
            bad(
                "node.admin_addr",
                &quoted(&addr.to_string()),
                "a loopback address (127.0.0.1:PORT), unless operators must prove their rights: \
                 set admin.token_file, or [admin.tls] with require_client_cert = true — \
                 anyone reaching the admin API can remove members and move the leader"
                    .into(),
            );
        }
        if n.data_dir.as_os_str().is_empty() {
            bad("node.data_dir", &quoted(""), "a directory path".into());
        }
        if !n.initial_members.is_empty() && !n.initial_members.contains_key(&n.id) {
            let ids: Vec<String> = n.initial_members.keys().map(u64::to_string).collect();
            bad(
                "node.initial_members",
                &format!("{{{}}}", ids.join(", ")),
                format!(
                    "must include this node (node.id = {}), or be empty to join or restart",
                    n.id
                ),
            );
        }
        for (id, addr) in &n.initial_members {
            if *id == 0 {
                bad(
                    "node.initial_members",
                    &format!("0 = {}", quoted(addr)),
                    "member ids other than 0".into(),
                );
            }
            if !is_host_port(addr) {
                bad(
                    &format!("node.initial_members.{id}"),
                    &quoted(addr),
                    "host:port with a port in 1..=65535".into(),
                );
            }
        }

        let r = &self.raft;
        if !(1..=MAX_TICK_MS).contains(&r.tick_ms) {
            bad("raft.tick_ms", &r.tick_ms, format!("1..={MAX_TICK_MS}"));
        }
        let tick = r.tick_ms.max(1);
        if r.election_timeout_ms < tick.saturating_mul(2) {
            bad(
                "raft.election_timeout_ms",
                &r.election_timeout_ms,
                format!(">= 2 * raft.tick_ms ({})", tick.saturating_mul(2)),
            );
        }
        if r.heartbeat_interval_ms == 0 || r.heartbeat_interval_ms >= r.election_timeout_ms {
            bad(
                "raft.heartbeat_interval_ms",
                &r.heartbeat_interval_ms,
                format!(
                    "1..{} (below raft.election_timeout_ms; a tenth to a fifth of it is usual)",
                    r.election_timeout_ms
                ),
            );
        }
        if r.lease_drift_ms >= r.election_timeout_ms {
            bad(
                "raft.lease_drift_ms",
                &r.lease_drift_ms,
                format!(
                    "0..{} (below raft.election_timeout_ms)",
                    r.election_timeout_ms
                ),
            );
        }
        if r.max_inflight_messages == 0 {
            bad("raft.max_inflight_messages", &0, ">= 1".into());
        }
        for (field, value) in [
            ("raft.max_message_bytes", r.max_message_bytes),
            ("raft.max_proposal_bytes", r.max_proposal_bytes),
            ("raft.max_uncommitted_bytes", r.max_uncommitted_bytes),
            ("raft.max_apply_batch_bytes", r.max_apply_batch_bytes),
        ] {
            if value == 0 {
                bad(field, &0, ">= 1".into());
            }
        }
        let one_proposal = r
            .max_proposal_bytes
            .saturating_add(dengine_core::ENTRY_OVERHEAD_BYTES);
        if r.max_uncommitted_bytes != 0 && r.max_uncommitted_bytes < one_proposal {
            bad(
                "raft.max_uncommitted_bytes",
                &r.max_uncommitted_bytes,
                format!(
                    ">= raft.max_proposal_bytes + {} ({one_proposal}), so one largest proposal fits",
                    dengine_core::ENTRY_OVERHEAD_BYTES
                ),
            );
        }

        let sn = &self.snapshot;
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&sn.chunk_bytes) {
            bad(
                "snapshot.chunk_bytes",
                &sn.chunk_bytes,
                format!("{MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES} (4 KiB..=64 MiB)"),
            );
        }
        if sn.chunk_timeout_ms == 0 {
            bad("snapshot.chunk_timeout_ms", &0, ">= 1".into());
        }

        let net = &self.network;
        if net.peer_queue_len == 0 {
            bad("network.peer_queue_len", &0, ">= 1".into());
        }
        if net.connect_timeout_ms == 0 {
            bad("network.connect_timeout_ms", &0, ">= 1".into());
        }
        if net.reconnect_initial_ms == 0 {
            bad("network.reconnect_initial_ms", &0, ">= 1".into());
        }
        if net.reconnect_initial_ms > net.reconnect_max_ms {
            bad(
                "network.reconnect_max_ms",
                &net.reconnect_max_ms,
                format!(
                    ">= network.reconnect_initial_ms ({})",
                    net.reconnect_initial_ms
                ),
            );
        }
        let (largest_name, largest) = [
            ("raft.max_message_bytes", r.max_message_bytes),
            ("raft.max_proposal_bytes", r.max_proposal_bytes),
            ("snapshot.chunk_bytes", sn.chunk_bytes as u64),
        ]
        .into_iter()
        .fold(
            ("", 0u64),
            |acc, (name, v)| if v > acc.1 { (name, v) } else { acc },
        );
        let needed = largest.saturating_add(MESSAGE_HEADROOM_BYTES as u64);
        if (net.max_message_bytes as u64) < needed {
            bad(
                "network.max_message_bytes",
                &net.max_message_bytes,
                format!(
                    ">= {needed} (the largest of raft.max_message_bytes, \
                     raft.max_proposal_bytes and snapshot.chunk_bytes, here {largest_name} = \
                     {largest}, plus {MESSAGE_HEADROOM_BYTES} bytes of headroom)"
                ),
            );
        }
        for (section, tls) in self.tls_sections() {
            for (field, path) in [("cert", &tls.cert), ("key", &tls.key), ("ca", &tls.ca)] {
                if path.as_os_str().is_empty() {
                    bad(
                        &format!("{section}.{field}"),
                        &quoted(""),
                        format!("a path to a PEM file (required when [{section}] is present)"),
                    );
                }
            }
        }
        if !net.member_names.is_empty() && !net.tls.as_ref().is_some_and(|t| t.require_client_cert)
        {
            bad(
                "network.member_names",
                &format!("{} names", net.member_names.len()),
                "only with network.tls.require_client_cert = true (names are checked in client \
                 certificates)"
                    .into(),
            );
        }
        for (field, value) in [
            ("network.max_connections", net.max_connections as u64),
            ("network.handshake_timeout_ms", net.handshake_timeout_ms),
            ("network.keepalive_interval_ms", net.keepalive_interval_ms),
            ("network.keepalive_timeout_ms", net.keepalive_timeout_ms),
            (
                "network.max_concurrent_streams",
                u64::from(net.max_concurrent_streams),
            ),
            (
                "network.max_snapshot_spool_bytes",
                net.max_snapshot_spool_bytes,
            ),
            (
                "client_api.max_connections",
                self.client_api.max_connections as u64,
            ),
        ] {
            if value == 0 {
                bad(field, &0, ">= 1".into());
            }
        }
        if net
            .tls
            .as_ref()
            .is_some_and(|tls| tls.server_name.as_deref() == Some(""))
        {
            bad(
                "network.tls.server_name",
                &quoted(""),
                "a DNS name, or leave it out to use the peer address's host".into(),
            );
        }

        let c = &self.client;
        for (field, value) in [
            ("client.propose_timeout_ms", c.propose_timeout_ms),
            ("client.read_timeout_ms", c.read_timeout_ms),
        ] {
            if value == 0 {
                bad(field, &0, ">= 1".into());
            }
        }
        if c.max_pending == 0 {
            bad("client.max_pending", &0, ">= 1".into());
        }

        // Every duration has an upper bound: deadlines are `now + duration`, which must not
        // overflow the clock.
        for (field, value) in [
            ("raft.election_timeout_ms", r.election_timeout_ms),
            ("raft.heartbeat_interval_ms", r.heartbeat_interval_ms),
            ("raft.lease_drift_ms", r.lease_drift_ms),
            ("snapshot.chunk_timeout_ms", sn.chunk_timeout_ms),
            ("network.connect_timeout_ms", net.connect_timeout_ms),
            ("network.reconnect_initial_ms", net.reconnect_initial_ms),
            ("network.reconnect_max_ms", net.reconnect_max_ms),
            ("network.handshake_timeout_ms", net.handshake_timeout_ms),
            ("network.keepalive_interval_ms", net.keepalive_interval_ms),
            ("network.keepalive_timeout_ms", net.keepalive_timeout_ms),
            ("client.propose_timeout_ms", c.propose_timeout_ms),
            ("client.read_timeout_ms", c.read_timeout_ms),
            (
                "shutdown.transfer_timeout_ms",
                self.shutdown.transfer_timeout_ms,
            ),
        ] {
            if value > MAX_DURATION_MS {
                bad(field, &value, format!("<= {MAX_DURATION_MS} (one day)"));
            }
        }

        let o = &self.observability;
        if let Some(addr) = &o.metrics_addr
            && addr.parse::<SocketAddr>().is_err()
        {
            bad(
                "observability.metrics_addr",
                &quoted(addr),
                "an IP socket address such as 127.0.0.1:9100 (no host names)".into(),
            );
        }
        if let Some(endpoint) = &o.otlp_endpoint {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if rest.is_none_or(str::is_empty) {
                bad(
                    "observability.otlp_endpoint",
                    &quoted(endpoint),
                    "a URL starting with http:// or https://, e.g. http://127.0.0.1:4317".into(),
                );
            }
        }

        // The core's own checks, on the values after conversion to ticks.
        if let Err(err) = self.core_config(0).validate() {
            for p in err.problems {
                let field = match p.field {
                    "id" => continue, // node.id is checked above
                    "election_timeout_ticks" => "raft.election_timeout_ms",
                    "heartbeat_interval_ticks" => "raft.heartbeat_interval_ms",
                    "lease_drift_ticks" => "raft.lease_drift_ms",
                    "max_inflight_messages" => "raft.max_inflight_messages",
                    "max_message_bytes" => "raft.max_message_bytes",
                    "max_proposal_bytes" => "raft.max_proposal_bytes",
                    "max_uncommitted_bytes" => "raft.max_uncommitted_bytes",
                    "max_apply_batch_bytes" => "raft.max_apply_batch_bytes",
                    other => other,
                };
                if problems.iter().any(|q| q.field == field) {
                    continue;
                }
                let value = match field {
                    "raft.election_timeout_ms" => r.election_timeout_ms.to_string(),
                    "raft.heartbeat_interval_ms" => r.heartbeat_interval_ms.to_string(),
                    "raft.lease_drift_ms" => r.lease_drift_ms.to_string(),
                    _ => p.value.clone(),
                };
                problems.push(SettingsProblem::new(
                    field,
                    value,
                    format!(
                        "rejected by the core after rounding up to ticks of raft.tick_ms ({tick} ms): \
                         {} = {}, allowed {}",
                        p.field, p.value, p.allowed
                    ),
                ));
            }
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Invalid { problems })
        }
    }

    /// Checks the files the settings name: the TLS certificate, key and CA must be readable
    /// files, and `node.data_dir`, if it exists, must be a directory. Separate from
    /// [`validate`](Self::validate) so settings can be checked on another machine.
    pub fn check_files(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        let mut files: Vec<(String, &Path)> = Vec::new();
        for (section, tls) in self.tls_sections() {
            files.push((format!("{section}.cert"), &tls.cert));
            files.push((format!("{section}.key"), &tls.key));
            files.push((format!("{section}.ca"), &tls.ca));
        }
        if let Some(path) = &self.network.cluster_secret_file {
            files.push(("network.cluster_secret_file".into(), path));
        }
        if let Some(path) = &self.admin.token_file {
            files.push(("admin.token_file".into(), path));
        }
        for (field, path) in files {
            if let Err(e) = std::fs::File::open(path).and_then(|f| f.metadata()) {
                problems.push(SettingsProblem::new(
                    &field,
                    quoted(&path.display().to_string()),
                    format!("a readable file ({e})"),
                ));
            } else if !path.is_file() {
                problems.push(SettingsProblem::new(
                    &field,
                    quoted(&path.display().to_string()),
                    "a regular file, not a directory",
                ));
            }
        }
        let dir = &self.node.data_dir;
        if dir.exists() && !dir.is_dir() {
            problems.push(SettingsProblem::new(
                "node.data_dir",
                quoted(&dir.display().to_string()),
                "a directory (or a path that does not exist yet); this is a file",
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Invalid { problems })
        }
    }
}

impl Settings {
    /// The TLS sections that are present, with their names.
    fn tls_sections(&self) -> impl Iterator<Item = (&'static str, &TlsSettings)> {
        [
            ("network.tls", &self.network.tls),
            ("client_api.tls", &self.client_api.tls),
            ("admin.tls", &self.admin.tls),
        ]
        .into_iter()
        .filter_map(|(name, tls)| tls.as_ref().map(|t| (name, t)))
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// `host:port` with a non-zero port; IPv6 hosts in brackets.
fn is_host_port(s: &str) -> bool {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return addr.port() != 0;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    port_ok && host_ok
}

fn unknown_env(var: &str, value: &str, path: &str, known_lower_case: bool) -> SettingsProblem {
    let allowed = if known_lower_case {
        format!("variable names are upper case: use {}", env_var_name(path))
    } else {
        let suggestion = SETTING_PATHS
            .iter()
            .map(|p| (edit_distance(p, path), p))
            .min()
            .filter(|(d, _)| *d <= 3)
            .map(|(_, p)| format!("did you mean {}? ", env_var_name(p)))
            .unwrap_or_default();
        format!(
            "not a dengine setting; {suggestion}overrides are named \
             DENGINE_<SECTION>__<FIELD> with double underscores, e.g. DENGINE_RAFT__TICK_MS \
             (see docs/configuration.md); unset the variable if it is not meant for dengine"
        )
    };
    SettingsProblem::new(var, quoted(value), allowed)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// One environment override being parsed.
struct EnvValue<'a> {
    var: &'a str,
    path: &'a str,
    value: &'a str,
}

impl EnvValue<'_> {
    fn problem(&self, expected: &str) -> SettingsProblem {
        SettingsProblem::new(
            format!("{} ({})", self.var, self.path),
            quoted(self.value),
            format!("expected {expected}"),
        )
    }

    fn num<T: std::str::FromStr + TypeName>(&self) -> Result<T, SettingsProblem> {
        self.value
            .trim()
            .parse()
            .map_err(|_| self.problem(T::EXPECTED))
    }

    fn bool(&self) -> Result<bool, SettingsProblem> {
        match self.value.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(self.problem("a boolean: true or false")),
        }
    }

    fn opt_string(&self) -> Option<String> {
        (!self.value.is_empty()).then(|| self.value.to_owned())
    }

    fn compression(&self) -> Result<Compression, SettingsProblem> {
        match self.value.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            _ => Err(self.problem("one of none, gzip")),
        }
    }

    fn cluster_state(&self) -> Result<ClusterState, SettingsProblem> {
        match self.value {
            "new" => Ok(ClusterState::New),
            "existing" => Ok(ClusterState::Existing),
            _ => Err(self.problem("new or existing")),
        }
    }

    fn members(&self) -> Result<BTreeMap<NodeId, String>, SettingsProblem> {
        const FORMAT: &str =
            "comma-separated id=host:port pairs, e.g. 1=10.0.0.1:7000,2=10.0.0.2:7000";
        let mut members = BTreeMap::new();
        for item in self
            .value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let Some((id, addr)) = item.split_once('=') else {
                return Err(self.problem(&format!("{FORMAT} (no '=' in {item:?})")));
            };
            let Ok(id) = id.trim().parse::<NodeId>() else {
                return Err(self.problem(&format!("{FORMAT} (id {:?} is not a number)", id.trim())));
            };
            if members.insert(id, addr.trim().to_owned()).is_some() {
                return Err(self.problem(&format!("{FORMAT} (id {id} appears twice)")));
            }
        }
        Ok(members)
    }
}

/// Sets the field of a `[*.tls]` section named by the last part of `path`.
fn set_tls(
    tls: &mut Option<TlsSettings>,
    path: &str,
    v: &EnvValue<'_>,
) -> Result<(), SettingsProblem> {
    let t = tls.get_or_insert_default();
    match path.rsplit('.').next().unwrap_or("") {
        "cert" => t.cert = PathBuf::from(v.value),
        "key" => t.key = PathBuf::from(v.value),
        "ca" => t.ca = PathBuf::from(v.value),
        "require_client_cert" => t.require_client_cert = v.bool()?,
        "server_name" => t.server_name = v.opt_string(),
        _ => return Err(v.problem("a field of a TLS section")),
    }
    Ok(())
}

/// What an environment value of a numeric type must look like.
trait TypeName {
    const EXPECTED: &'static str;
}

impl TypeName for u64 {
    const EXPECTED: &'static str = "an unsigned integer (0..=18446744073709551615)";
}

impl TypeName for usize {
    const EXPECTED: &'static str = "an unsigned integer";
}

impl TypeName for u32 {
    const EXPECTED: &'static str = "an unsigned integer (0..=4294967295)";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The complete example in `docs/configuration.md`: the first ```toml block after the
    /// "## Complete example" heading.
    fn doc_example() -> &'static str {
        let doc = include_str!("../../../docs/configuration.md");
        let start = doc.find("## Complete example").expect("example heading");
        let rest = &doc[start..];
        let open = rest.find("```toml\n").expect("toml block") + "```toml\n".len();
        let len = rest[open..].find("```").expect("closing fence");
        &rest[open..open + len]
    }

    fn valid() -> Settings {
        let mut s = Settings::default();
        s.node.id = 1;
        s
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn defaults_convert_to_a_valid_core_config() {
        let s = valid();
        let c = s.core_config(7);
        assert_eq!(c.election_timeout_ticks, 10);
        assert_eq!(c.heartbeat_interval_ticks, 2);
        assert_eq!(c.lease_drift_ticks, 2);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
    }

    #[test]
    fn defaults_validate_once_the_id_is_set() {
        valid().validate().unwrap();
        let err = Settings::default().validate().unwrap_err();
        assert_eq!(err.problems().len(), 1, "{err}");
        assert_eq!(err.problems()[0].field, "node.id");
    }

    #[test]
    fn full_toml_example_from_the_docs_parses_and_validates() {
        let s = Settings::from_toml_str(doc_example()).unwrap();
        s.validate().unwrap();
        assert_eq!(s.node.id, 1);
        assert_eq!(s.node.initial_members.len(), 3);
        assert_eq!(s.node.initial_members[&2], "10.0.0.2:7000");
        assert_eq!(s.network.compression, Compression::Gzip);
        let tls = s.network.tls.as_ref().unwrap();
        assert!(tls.require_client_cert);
        assert_eq!(
            s.observability.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        // The example sets every field, so it differs from the defaults everywhere it can.
        assert_ne!(s.raft, RaftSettings::default());
    }

    #[test]
    fn docs_mention_every_setting_and_its_env_var_rule() {
        let doc = include_str!("../../../docs/configuration.md");
        let example: toml::Value = toml::from_str(doc_example()).unwrap();
        for path in SETTING_PATHS {
            let field = path.rsplit('.').next().unwrap();
            assert!(
                doc.contains(&format!("`{field}`")),
                "docs/configuration.md has no row for {path}"
            );
            // The complete example sets every setting.
            let mut v = &example;
            for part in path.split('.') {
                v = v
                    .get(part)
                    .unwrap_or_else(|| panic!("example lacks {path}"));
            }
        }
        assert!(doc.contains("DENGINE_RAFT__ELECTION_TIMEOUT_MS"));
    }

    #[test]
    fn every_setting_path_has_an_env_override() {
        for path in SETTING_PATHS {
            let sample = match *path {
                "node.initial_members" | "network.member_names" => "1=127.0.0.1:7001",
                "network.compression" => "gzip",
                "node.initial_cluster_state" => "existing",
                p if p.ends_with("pre_vote")
                    || p.ends_with("check_quorum")
                    || p.ends_with("fsync")
                    || p.ends_with("require_client_cert") =>
                {
                    "false"
                }
                _ => "7",
            };
            let mut s = Settings::default();
            s.apply_env([(env_var_name(path), sample)])
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_ne!(s, Settings::default(), "{path} did not change anything");
        }
    }

    #[test]
    fn initial_members_round_trip_through_toml() {
        let mut s = valid();
        s.node.initial_members.insert(1, "127.0.0.1:7001".into());
        s.node.initial_members.insert(2, "127.0.0.1:7002".into());
        let text = toml::to_string(&s).unwrap();
        assert_eq!(Settings::from_toml_str(&text).unwrap(), s);
    }

    #[test]
    fn env_overrides_apply_and_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "[node]\nid = 1\n[raft]\nelection_timeout_ms = 600\ntick_ms = 20\n",
        )
        .unwrap();
        let env = [
            ("DENGINE_RAFT__ELECTION_TIMEOUT_MS", "800"),
            ("DENGINE_NODE__ID", "2"),
            ("DENGINE_NETWORK__TLS__CERT", "/x.pem"),
            ("DENGINE_NETWORK__TLS__KEY", "/x.key"),
            ("DENGINE_NETWORK__TLS__CA", "/ca.pem"),
            (
                "DENGINE_NODE__INITIAL_MEMBERS",
                "1=127.0.0.1:7001, 2=127.0.0.1:7002,3=node3.example:7000",
            ),
            ("DENGINE_OBSERVABILITY__METRICS_ADDR", "127.0.0.1:9100"),
            ("DENGINE_CONFIG", "/ignored/reserved.toml"),
            ("PATH", "/usr/bin"),
        ];
        let s = Settings::load_with_env(Some(&path), env).unwrap();
        assert_eq!(s.raft.election_timeout_ms, 800);
        assert_eq!(s.raft.tick_ms, 20, "file value kept");
        assert_eq!(s.node.id, 2);
        assert_eq!(
            s.network.tls.as_ref().unwrap().cert,
            PathBuf::from("/x.pem")
        );
        assert_eq!(s.node.initial_members.len(), 3);
        assert_eq!(s.node.initial_members[&3], "node3.example:7000");
        assert_eq!(
            s.observability.metrics_addr.as_deref(),
            Some("127.0.0.1:9100")
        );

        // An empty value unsets an optional setting.
        let s = Settings::load_with_env(Some(&path), [("DENGINE_OBSERVABILITY__METRICS_ADDR", "")])
            .unwrap();
        assert_eq!(s.observability.metrics_addr, None);
    }

    #[test]
    fn bad_env_value_is_named_with_value_and_type() {
        let err = Settings::load_with_env(
            None,
            [
                ("DENGINE_NODE__ID", "1"),
                ("DENGINE_RAFT__TICK_MS", "fast"),
                ("DENGINE_RAFT__PRE_VOTE", "yes"),
                ("DENGINE_NODE__INITIAL_MEMBERS", "1:127.0.0.1:7001"),
            ],
        )
        .unwrap_err();
        assert!(matches!(err, SettingsError::Env { .. }), "{err}");
        assert_eq!(err.problems().len(), 3, "{err}");
        let text = err.to_string();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(
            text.contains(
                "DENGINE_RAFT__TICK_MS (raft.tick_ms) = \"fast\": expected an unsigned integer"
            ),
            "{text}"
        );
        assert!(
            text.contains("DENGINE_RAFT__PRE_VOTE (raft.pre_vote) = \"yes\": expected a boolean"),
            "{text}"
        );
        assert!(text.contains("DENGINE_NODE__INITIAL_MEMBERS"), "{text}");
        assert!(text.contains("id=host:port"), "{text}");
    }

    #[test]
    fn unknown_env_var_is_named_with_a_suggestion() {
        let err = Settings::load_with_env(
            None,
            [("DENGINE_NODE__ID", "1"), ("DENGINE_RAFT__TICKMS", "20")],
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems().len(), 1, "{text}");
        assert_eq!(err.problems()[0].field, "DENGINE_RAFT__TICKMS");
        assert!(
            text.contains("did you mean DENGINE_RAFT__TICK_MS?"),
            "{text}"
        );

        let err = Settings::default()
            .apply_env([("DENGINE_raft__tick_ms", "20")])
            .unwrap_err();
        assert!(
            err.to_string().contains("use DENGINE_RAFT__TICK_MS"),
            "{err}"
        );

        let err = Settings::default()
            .apply_env([("DENGINE_SOMETHING_ELSE", "x")])
            .unwrap_err();
        assert!(err.to_string().contains("DENGINE_SOMETHING_ELSE"), "{err}");
    }

    #[test]
    fn unknown_toml_field_is_refused_with_its_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[node]\nid = 1\n\n[raft]\nelection_timeout = 800\n").unwrap();
        let err = Settings::load_with_env(Some(&path), no_env()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SettingsError::Parse { .. }), "{text}");
        assert!(text.contains("bad.toml"), "{text}");
        assert!(text.contains("election_timeout"), "{text}");
        assert!(text.contains("line 5"), "{text}");

        let err = Settings::from_toml_str("[raft]\ntick_ms = \"fast\"\n").unwrap_err();
        assert!(err.to_string().contains("tick_ms"), "{err}");

        let err = Settings::from_toml_str("[nodes]\nid = 1\n").unwrap_err();
        assert!(err.to_string().contains("nodes"), "{err}");
    }

    #[test]
    fn missing_file_is_named() {
        let err = Settings::load_with_env(Some(Path::new("/nonexistent/dengine.toml")), no_env())
            .unwrap_err();
        assert!(matches!(err, SettingsError::Read { .. }));
        assert!(
            err.to_string().contains("/nonexistent/dengine.toml"),
            "{err}"
        );
    }

    #[test]
    fn durations_beyond_a_day_are_refused_instead_of_overflowing_deadlines() {
        let mut s = Settings::default();
        s.node.id = 1;
        s.client.propose_timeout_ms = u64::MAX;
        s.network.reconnect_max_ms = u64::MAX;
        let err = s.validate().unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"client.propose_timeout_ms"), "{fields:?}");
        assert!(fields.contains(&"network.reconnect_max_ms"), "{fields:?}");
        assert!(err.to_string().contains("<= 86400000 (one day)"), "{err}");
    }

    #[test]
    fn validate_reports_every_problem_with_value_and_range() {
        let mut s = Settings::default(); // node.id = 0
        s.node.listen_addr = "localhost:7000".into();
        s.node.advertise_addr = Some("no-port".into());
        s.node.initial_members.insert(2, "10.0.0.2:7000".into());
        s.node.initial_members.insert(3, "10.0.0.3".into());
        s.raft.tick_ms = 100;
        s.raft.election_timeout_ms = 150;
        s.raft.heartbeat_interval_ms = 200;
        s.raft.lease_drift_ms = 150;
        s.raft.max_inflight_messages = 0;
        s.raft.max_proposal_bytes = 100 << 20;
        s.snapshot.chunk_bytes = 1024;
        s.snapshot.chunk_timeout_ms = 0;
        s.network.peer_queue_len = 0;
        s.network.reconnect_initial_ms = 5000;
        s.network.tls = Some(TlsSettings::default());
        s.client.max_pending = 0;
        s.client.read_timeout_ms = 0;
        s.observability.metrics_addr = Some("metrics:9100".into());
        s.observability.otlp_endpoint = Some("127.0.0.1:4317".into());

        let err = s.validate().unwrap_err();
        let text = err.to_string();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        for expected in [
            "node.id",
            "node.listen_addr",
            "node.advertise_addr",
            "node.initial_members",
            "node.initial_members.3",
            "raft.election_timeout_ms",
            "raft.heartbeat_interval_ms",
            "raft.lease_drift_ms",
            "raft.max_inflight_messages",
            "raft.max_uncommitted_bytes",
            "snapshot.chunk_bytes",
            "snapshot.chunk_timeout_ms",
            "network.peer_queue_len",
            "network.reconnect_max_ms",
            "network.max_message_bytes",
            "network.tls.cert",
            "network.tls.key",
            "network.tls.ca",
            "client.read_timeout_ms",
            "client.max_pending",
            "observability.metrics_addr",
            "observability.otlp_endpoint",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} not reported:\n{text}"
            );
        }
        assert_eq!(text.lines().count(), err.problems().len() + 1, "{text}");
        assert!(
            text.contains("raft.election_timeout_ms = 150: >= 2 * raft.tick_ms (200)"),
            "{text}"
        );
        assert!(
            text.contains("snapshot.chunk_bytes = 1024: 4096..=67108864"),
            "{text}"
        );
        assert!(
            text.contains("network.max_message_bytes = 67108864: >= 104923136"),
            "{text}"
        );
        assert!(
            text.contains("node.listen_addr = \"localhost:7000\""),
            "{text}"
        );
    }

    #[test]
    fn core_checks_after_tick_rounding_are_reported_under_settings_names() {
        let mut s = valid();
        s.raft.tick_ms = 50;
        s.raft.election_timeout_ms = 500;
        s.raft.heartbeat_interval_ms = 460; // 10 ticks, like the election timeout
        let err = s.validate().unwrap_err();
        assert_eq!(err.problems().len(), 1, "{err}");
        let p = &err.problems()[0];
        assert_eq!(p.field, "raft.heartbeat_interval_ms");
        assert_eq!(p.value, "460");
        assert!(p.allowed.contains("ticks"), "{err}");
    }

    #[test]
    fn host_port_forms() {
        for ok in [
            "10.0.0.1:7000",
            "[::1]:7000",
            "node-1.example.com:7000",
            "n_1:1",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "host:",
            ":7000",
            "host:0",
            "host:70000",
            "a b:1",
            "::1:7000",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn check_files_names_missing_tls_files() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("node.pem");
        std::fs::write(&cert, "x").unwrap();
        let mut s = valid();
        s.node.data_dir = cert.clone();
        s.network.tls = Some(TlsSettings {
            cert: cert.clone(),
            key: dir.path().join("missing.key"),
            ca: dir.path().to_owned(),
            ..TlsSettings::default()
        });
        let err = s.check_files().unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["network.tls.key", "network.tls.ca", "node.data_dir"],
            "{err}"
        );
        assert!(err.to_string().contains("missing.key"), "{err}");
    }
}
