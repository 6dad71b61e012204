//! [`Settings`]: everything a dengine server is configured with, in one TOML file plus
//! `DENGINE_*` environment overrides.
//!
//! Each section belongs to the crate that uses it and is declared once, as a serde struct with
//! defaults: `[raft]`, `[storage]`, `[snapshot]`, `[client]`, `[shutdown]` are
//! [`dengine_node::config`]; `[network]` is the transport's [`GrpcConfig`]; `[node]` (identity,
//! addresses, data directory), `[client_api]`, `[admin]` and `[observability]` are the
//! server's own, here. The TOML path of a setting and its environment variable follow from the
//! structs: `raft.tick_ms` is `DENGINE_RAFT__TICK_MS`, `network.tls.cert` is
//! `DENGINE_NETWORK__TLS__CERT`. Loading is layered with [figment]: defaults, then the file,
//! then the environment. [`Settings::validate`] reports every bad field at once, by path, with
//! its value and what would be accepted. The reference of every setting is
//! `docs/configuration.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
#[cfg(test)]
use std::time::Duration;

use dengine_core::{ConfigError, ConfigProblem, NodeId};
use dengine_net_grpc::{GrpcConfig, TlsConfig};
use dengine_node::NodeConfig;
use dengine_node::config::{
    ClientSettings, RaftSettings, ShutdownSettings, SnapshotSettings, StorageSettings,
};
use figment::value::{Dict, Empty, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "DENGINE_";

/// Variables that start with [`ENV_PREFIX`] but are not settings (a binary's config-file path
/// and log filter); loading ignores them instead of refusing them.
pub const RESERVED_ENV_VARS: &[&str] = &["DENGINE_CONFIG", "DENGINE_LOG"];

/// Headroom that `network.max_message_bytes` must leave above the largest payload one peer
/// message carries (entry or chunk bytes), for headers and framing: 64 KiB.
pub const MESSAGE_HEADROOM_BYTES: usize = 64 << 10;

/// All settings of one server. Sections mirror the TOML file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Identity, addresses, data directory.
    pub node: NodeSettings,
    /// Protocol timing and limits.
    pub raft: RaftSettings,
    /// Which log store, and the write policy.
    pub storage: StorageSection,
    /// Snapshot and compaction policy.
    pub snapshot: SnapshotSettings,
    /// The peer transport and the peer listener.
    pub network: GrpcConfig,
    /// The client listener (the application's API, `node.client_addr`).
    pub client_api: ClientApiSettings,
    /// The admin listener (`node.admin_addr`): who may administer the node.
    pub admin: AdminSettings,
    /// Client-facing limits.
    pub client: ClientSettings,
    /// Exactly-once client sessions (Raft thesis §6.3).
    pub client_sessions: ClientSessionsSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
    /// Metrics and tracing export.
    pub observability: ObservabilitySettings,
}

/// `[storage]`: the log store a server opens (`backend`, the server's choice) and the write
/// policy the runtime follows (`fsync`, handed to it as its [`StorageSettings`]). The runtime's
/// own struct cannot be embedded as it is: the section has a field of the server's too, and
/// serde's `flatten` would silently accept misspelt fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// The log store under `<node.data_dir>/log`. Default `wal`.
    pub backend: LogBackend,
    /// [`StorageSettings::fsync`]: sync the log before acknowledging. Default true.
    pub fsync: bool,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            backend: LogBackend::default(),
            fsync: StorageSettings::default().fsync,
        }
    }
}

/// The log stores a server can open (`storage.backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    /// `dengine-storage-wal`: a write-ahead log with preallocated, recycled segments and one
    /// `fdatasync` per batch (the fastest durable writes).
    #[default]
    Wal,
    /// `dengine-storage-redb`: the log in a redb database (about two syncs per batch).
    Redb,
    /// `dengine-storage-sled`: the log in a sled database (feature `sled`).
    Sled,
}

impl fmt::Display for LogBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogBackend::Wal => "wal",
            LogBackend::Redb => "redb",
            LogBackend::Sled => "sled",
        })
    }
}

/// Whether a node with an empty data directory founds a new cluster or joins an existing one
/// (etcd's `--initial-cluster-state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// Found the cluster of `node.initial_members` — unless one of them reports that it knew
    /// this member before, in which case this node lost its data and refuses to start.
    #[default]
    New,
    /// Join a cluster that exists: start empty and wait for the leader, which must have added
    /// this node (under a new id) with a membership change.
    Existing,
}

/// `[node]`: who this node is, where it listens and keeps its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// This node's id, unique in the cluster; must not be 0 (the default, refused).
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
    /// Address the client listener binds: the application's API. Default: none.
    pub client_addr: Option<String>,
    /// Address the admin listener binds (`dengine.admin.v1.Admin`). Default: none. An address
    /// other hosts can reach needs `[admin]` credentials.
    pub admin_addr: Option<String>,
    /// Directory for the member identity, the log store and snapshots. Default
    /// `./dengine-data`.
    pub data_dir: PathBuf,
    /// Initial members (id → peer address) when bootstrapping a new cluster, this node
    /// included. Ignored once the data directory holds state. In the environment:
    /// `1=10.0.0.1:7000,2=10.0.0.2:7000`. Default empty.
    #[serde(with = "dengine_net_grpc::id_map")]
    pub initial_members: BTreeMap<NodeId, String>,
    /// With an empty data directory: found the cluster (`new`) or join one (`existing`).
    /// Default `new`.
    pub initial_cluster_state: ClusterState,
    /// A backup file ([`crate::backup`]) to found the new cluster with: with an empty data
    /// directory and `initial_cluster_state = "new"`, the state machine starts from the
    /// backup's state instead of empty (give every initial member the same file). Ignored
    /// once the data directory holds state. Default: none.
    pub restore_from: Option<PathBuf>,
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
            restore_from: None,
        }
    }
}

/// `[client_api]`: the client listener (`node.client_addr`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientApiSettings {
    /// TLS for clients; plaintext when absent. With `require_client_cert`, only clients with
    /// a certificate of `ca` connect.
    pub tls: Option<TlsConfig>,
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

/// `[client_sessions]`: exactly-once client sessions (Raft thesis §6.3, docs/sessions.md).
/// Every member of a cluster must have the same values: they decide, on every replica
/// alike, what a session refuses and when it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSessionsSettings {
    /// Turns sessions on. Default false. With a durable state machine, a retry of a command
    /// applied in the log after the newest snapshot, before a restart, is answered "applied,
    /// response lost" (docs/sessions.md).
    pub enabled: bool,
    /// Most sessions open at once; opening one more evicts the least recently active.
    /// Default 10,000.
    pub max_sessions: usize,
    /// A session with no command or keep-alive for this long (in the leaders' clock time, as
    /// recorded in the log) expires. Default 600,000 (10 minutes).
    pub idle_expiry_ms: u64,
    /// Most responses one session keeps that its client has not acknowledged; a command
    /// beyond it is refused. Default 1,024.
    pub max_unacknowledged: usize,
}

impl Default for ClientSessionsSettings {
    fn default() -> Self {
        let limits = dengine_node::SessionLimits::default();
        ClientSessionsSettings {
            enabled: false,
            max_sessions: limits.max_sessions,
            idle_expiry_ms: limits.idle_expiry_ms,
            max_unacknowledged: limits.max_unacknowledged,
        }
    }
}

impl ClientSessionsSettings {
    /// The limits to start the node with, when sessions are on.
    pub fn limits(&self) -> Option<dengine_node::SessionLimits> {
        self.enabled.then_some(dengine_node::SessionLimits {
            max_sessions: self.max_sessions,
            idle_expiry_ms: self.idle_expiry_ms,
            max_unacknowledged: self.max_unacknowledged,
        })
    }
}

/// `[admin]`: who may use the admin listener (`node.admin_addr`). Operators have rights
/// through a client certificate of `admin.tls.ca` (with `require_client_cert`), through the
/// token of `token_file`, or by being on this host when the address is a loopback one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// TLS for the admin listener; plaintext when absent.
    pub tls: Option<TlsConfig>,
    /// A file holding a token (16+ printable ASCII characters) that admin requests must send
    /// as `authorization: Bearer <token>`. Default none.
    pub token_file: Option<PathBuf>,
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
    /// The `service.instance.id` of exported spans, which tells the members apart in a trace
    /// viewer. Default: `<host name>-<process id>`; dengine-kv sets `member-<node.id>`.
    pub service_instance_id: Option<String>,
}

/// Why settings could not be loaded or are invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file is missing or unreadable, is not valid TOML, or a value (from the file or the
    /// environment) has the wrong type or names an unknown field.
    #[error("{0}")]
    Load(String),
    /// Environment variables that start with `DENGINE_` but name no setting.
    #[error("unknown DENGINE_* environment variables, fix or unset them:{}", list(.problems))]
    Env {
        /// One problem per variable, with a suggestion where one is close.
        problems: Vec<ConfigProblem>,
    },
    /// Values out of range.
    #[error("invalid settings ({} problems):{}", .problems.len(), list(.problems))]
    Invalid {
        /// Every bad field, with its value and what would be accepted.
        problems: Vec<ConfigProblem>,
    },
}

impl SettingsError {
    /// The individual problems (empty for [`SettingsError::Load`]).
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            SettingsError::Env { problems } | SettingsError::Invalid { problems } => problems,
            SettingsError::Load(_) => &[],
        }
    }
}

fn list(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("\n  {} = {}: allowed {}", p.field, p.value, p.allowed))
        .collect()
}

impl Settings {
    /// Reads `path` (if given), applies the `DENGINE_*` environment overrides and validates
    /// the result, reporting every problem at once.
    pub fn load(path: Option<&Path>) -> Result<Self, SettingsError> {
        let settings = Self::load_unvalidated(path)?;
        settings.validate()?;
        Ok(settings)
    }

    /// [`load`](Self::load) without validating (for a binary that still applies its flags).
    pub fn load_unvalidated(path: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Loads from `path` (if given) and the variables of `env` (for tests; [`load`](Self::load)
    /// passes the process environment). Does not validate.
    pub fn load_with_env<I, K, V>(path: Option<&Path>, env: I) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut figment =
            Figment::from(figment::providers::Serialized::defaults(Settings::default()));
        if let Some(path) = path {
            if !path.is_file() {
                return Err(SettingsError::Load(format!(
                    "cannot read the settings file {}: it does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(TomlText::read(path)?);
        }
        figment = figment.merge(EnvOverrides::parse(env)?);
        figment
            .extract_lossy()
            .map_err(|e| SettingsError::Load(describe(e)))
    }

    /// Parses settings from TOML text (no environment, no validation).
    pub fn from_toml_str(text: &str) -> Result<Self, SettingsError> {
        Figment::from(figment::providers::Serialized::defaults(Settings::default()))
            .merge(TomlText {
                source: None,
                text: text.to_owned(),
            })
            .extract()
            .map_err(|e| SettingsError::Load(describe(e)))
    }

    /// The runtime's part.
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            id: self.node.id,
            raft: self.raft.clone(),
            storage: StorageSettings {
                fsync: self.storage.fsync,
            },
            snapshot: self.snapshot.clone(),
            client: self.client.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// The transport's part, with this node's id and cluster id.
    pub fn grpc_config(&self) -> GrpcConfig {
        GrpcConfig {
            id: self.node.id,
            cluster_id: self.node.cluster_id,
            ..self.network.clone()
        }
    }

    /// Checks every field and reports all problems at once, each with its path, its value and
    /// what would be accepted. Does not touch the file system (see
    /// [`check_files`](Self::check_files)).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut problems = self.node_problems();
        if let Err(e) = self.node_config().validate() {
            problems.extend(e.problems.into_iter().map(|mut p| {
                if p.field == "id" {
                    p.field = "node.id".into();
                }
                p
            }));
        }
        if let Err(e) = self.network.validate() {
            problems.extend(e.prefixed("network").problems);
        }
        let r = &self.raft;
        let largest = [
            ("raft.max_message_bytes", r.max_message_bytes),
            ("raft.max_proposal_bytes", r.max_proposal_bytes),
            (
                "network.snapshot_chunk_bytes",
                self.network.snapshot_chunk_bytes as u64,
            ),
        ]
        .into_iter()
        .max_by_key(|(_, v)| *v);
        if let Some((name, largest)) = largest {
            let needed = largest.saturating_add(MESSAGE_HEADROOM_BYTES as u64);
            if (self.network.max_message_bytes as u64) < needed {
                problems.push(ConfigProblem::new(
                    "network.max_message_bytes",
                    self.network.max_message_bytes,
                    format!(
                        ">= {needed} (the largest of raft.max_message_bytes, \
                         raft.max_proposal_bytes and network.snapshot_chunk_bytes, here \
                         {name} = {largest}, plus {MESSAGE_HEADROOM_BYTES} bytes of headroom)"
                    ),
                ));
            }
        }
        for (section, tls) in [
            ("client_api.tls", &self.client_api.tls),
            ("admin.tls", &self.admin.tls),
        ] {
            if let Some(tls) = tls {
                problems.extend(
                    ConfigError {
                        problems: tls.problems(),
                    }
                    .prefixed(section)
                    .problems,
                );
                if let Some(name) = &tls.server_name {
                    problems.push(ConfigProblem::new(
                        format!("{section}.server_name"),
                        quoted(name),
                        "nothing: only [network.tls] verifies a server name (this listener \
                         only serves)",
                    ));
                }
            }
        }
        if !cfg!(feature = "sled") && self.storage.backend == LogBackend::Sled {
            problems.push(sled_missing());
        }
        if self.client_api.max_connections == 0 {
            problems.push(ConfigProblem::new("client_api.max_connections", 0, ">= 1"));
        }
        let sessions = &self.client_sessions;
        for (field, value) in [
            ("client_sessions.max_sessions", sessions.max_sessions as u64),
            ("client_sessions.idle_expiry_ms", sessions.idle_expiry_ms),
            (
                "client_sessions.max_unacknowledged",
                sessions.max_unacknowledged as u64,
            ),
        ] {
            if value == 0 {
                problems.push(ConfigProblem::new(field, 0, ">= 1"));
            }
        }
        let o = &self.observability;
        if let Some(addr) = &o.metrics_addr
            && addr.parse::<SocketAddr>().is_err()
        {
            problems.push(ConfigProblem::new(
                "observability.metrics_addr",
                quoted(addr),
                "an IP socket address such as 127.0.0.1:9100 (no host names)",
            ));
        }
        if let Some(endpoint) = &o.otlp_endpoint {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if rest.is_none_or(str::is_empty) {
                problems.push(ConfigProblem::new(
                    "observability.otlp_endpoint",
                    quoted(endpoint),
                    "a URL starting with http:// or https://, e.g. http://127.0.0.1:4317",
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Invalid { problems })
        }
    }

    fn node_problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let n = &self.node;
        if n.listen_addr.parse::<SocketAddr>().is_err() {
            problems.push(ConfigProblem::new(
                "node.listen_addr",
                quoted(&n.listen_addr),
                "an IP socket address such as 0.0.0.0:7000 or [::1]:7000 (no host names)",
            ));
        }
        if let Some(addr) = &n.advertise_addr
            && !is_host_port(addr)
        {
            problems.push(ConfigProblem::new(
                "node.advertise_addr",
                quoted(addr),
                "host:port with a port in 1..=65535, e.g. node1.example.com:7000 or \
                 10.0.0.1:7000 (IPv6 in brackets)",
            ));
        }
        for (field, addr) in [
            ("node.client_addr", &n.client_addr),
            ("node.admin_addr", &n.admin_addr),
        ] {
            if let Some(addr) = addr
                && addr.parse::<SocketAddr>().is_err()
            {
                problems.push(ConfigProblem::new(
                    field,
                    quoted(addr),
                    "an IP socket address such as 127.0.0.1:2379 (no host names)",
                ));
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
            problems.push(ConfigProblem::new(
                "node.admin_addr",
                quoted(&addr.to_string()),
                "a loopback address (127.0.0.1:PORT), unless operators must prove their rights: \
                 set admin.token_file, or [admin.tls] with require_client_cert = true — anyone \
                 reaching the admin API can remove members and move the leader",
            ));
        }
        if n.data_dir.as_os_str().is_empty() {
            problems.push(ConfigProblem::new(
                "node.data_dir",
                quoted(""),
                "a directory path",
            ));
        }
        if !n.initial_members.is_empty() && !n.initial_members.contains_key(&n.id) {
            let ids: Vec<String> = n.initial_members.keys().map(u64::to_string).collect();
            problems.push(ConfigProblem::new(
                "node.initial_members",
                format!("{{{}}}", ids.join(", ")),
                format!(
                    "must include this node (node.id = {}), or be empty to join or restart",
                    n.id
                ),
            ));
        }
        if let Some(entry) = n.initial_members.get(&n.id)
            && let Some(expected) = own_entry_mismatch(n, entry)
        {
            problems.push(ConfigProblem::new(
                format!("node.initial_members.{}", n.id),
                quoted(entry),
                expected,
            ));
        }
        for (id, addr) in &n.initial_members {
            if *id == 0 {
                problems.push(ConfigProblem::new(
                    "node.initial_members",
                    format!("0 = {}", quoted(addr)),
                    "member ids other than 0",
                ));
            }
            if !is_host_port(addr) {
                problems.push(ConfigProblem::new(
                    format!("node.initial_members.{id}"),
                    quoted(addr),
                    "host:port with a port in 1..=65535",
                ));
            }
        }
        problems
    }

    /// Checks the files the settings name: the TLS certificates, keys and CAs, the cluster
    /// secret and the admin token must be readable files, and `node.data_dir`, if it exists,
    /// must be a directory. Separate from [`validate`](Self::validate) so settings can be
    /// checked on another machine.
    pub fn check_files(&self) -> Result<(), SettingsError> {
        let mut files: Vec<(String, &Path)> = Vec::new();
        for (section, tls) in [
            ("network.tls", &self.network.tls),
            ("client_api.tls", &self.client_api.tls),
            ("admin.tls", &self.admin.tls),
        ] {
            if let Some(tls) = tls {
                files.push((format!("{section}.cert"), &tls.cert));
                files.push((format!("{section}.key"), &tls.key));
                files.push((format!("{section}.ca"), &tls.ca));
            }
        }
        if let Some(path) = &self.network.cluster_secret_file {
            files.push(("network.cluster_secret_file".into(), path));
        }
        if let Some(path) = &self.admin.token_file {
            files.push(("admin.token_file".into(), path));
        }
        if let Some(path) = &self.node.restore_from {
            files.push(("node.restore_from".into(), path));
        }
        let mut problems = Vec::new();
        for (field, path) in files {
            if let Err(e) = std::fs::File::open(path).and_then(|f| f.metadata()) {
                problems.push(ConfigProblem::new(
                    field,
                    quoted(&path.display().to_string()),
                    format!("a readable file ({e})"),
                ));
            } else if !path.is_file() {
                problems.push(ConfigProblem::new(
                    field,
                    quoted(&path.display().to_string()),
                    "a regular file, not a directory",
                ));
            }
        }
        let dir = &self.node.data_dir;
        if dir.exists() && !dir.is_dir() {
            problems.push(ConfigProblem::new(
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

    /// Every setting's dotted path (`raft.tick_ms`, `network.tls.cert`), derived from the
    /// structs: what the file and the environment accept.
    pub fn paths() -> Vec<String> {
        let mut paths = Vec::new();
        if let Ok(value) = serde_json::to_value(Self::exemplar()) {
            walk(&value, String::new(), &mut paths);
        }
        paths
    }

    /// Settings with every optional section and field set, so that [`paths`](Self::paths)
    /// reaches every leaf.
    fn exemplar() -> Settings {
        let mut s = Settings::default();
        s.node.advertise_addr = Some(String::new());
        s.node.client_addr = Some(String::new());
        s.node.admin_addr = Some(String::new());
        s.node.initial_members.insert(1, String::new());
        s.network.tls = Some(TlsConfig {
            server_name: Some(String::new()),
            ..TlsConfig::default()
        });
        s.network.member_names.insert(1, String::new());
        s.network.cluster_secret_file = Some(PathBuf::new());
        s.client_api.tls = Some(TlsConfig::default());
        s.admin.tls = Some(TlsConfig::default());
        s.admin.token_file = Some(PathBuf::new());
        s.observability.metrics_addr = Some(String::new());
        s.observability.otlp_endpoint = Some(String::new());
        s.observability.service_instance_id = Some(String::new());
        s
    }
}

fn walk(value: &serde_json::Value, prefix: String, out: &mut Vec<String>) {
    match value {
        // The id → address maps are one setting each.
        serde_json::Value::Object(map)
            if !prefix.ends_with("initial_members") && !prefix.ends_with("member_names") =>
        {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(v, path, out);
            }
        }
        _ => out.push(prefix),
    }
}

/// The environment variable of the setting at `path`: `raft.tick_ms` →
/// `DENGINE_RAFT__TICK_MS`.
pub fn env_var_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.split('.')
            .map(str::to_ascii_uppercase)
            .collect::<Vec<_>>()
            .join("__")
    )
}

/// The `DENGINE_*` variables of an environment as a figment provider: each names its setting
/// by path (`DENGINE_RAFT__TICK_MS` → `raft.tick_ms`); values are strings, read as numbers or
/// booleans where the setting is one, and an empty value unsets an optional setting. Unknown
/// and lower-case names are refused before anything is read, all at once, with the closest
/// real name.
struct EnvOverrides {
    values: Vec<(Vec<String>, String)>,
}

impl EnvOverrides {
    fn parse<I, K, V>(env: I) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let known = Settings::paths();
        let mut values = Vec::new();
        let mut problems = Vec::new();
        for (var, value) in env {
            let (var, value) = (var.as_ref(), value.as_ref());
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if RESERVED_ENV_VARS.contains(&var) {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let dotted = path.join(".");
            let settable = known.contains(&dotted);
            if rest != rest.to_ascii_uppercase() {
                problems.push(ConfigProblem::new(
                    var,
                    quoted(value),
                    format!(
                        "variable names are upper case: use {}",
                        env_var_name(&dotted)
                    ),
                ));
            } else if !settable {
                let closest = known
                    .iter()
                    .min_by_key(|k| edit_distance(k, &dotted))
                    .filter(|k| edit_distance(k, &dotted) <= 3);
                problems.push(ConfigProblem::new(
                    var,
                    quoted(value),
                    match closest {
                        Some(k) => {
                            format!("a setting's variable: did you mean {}?", env_var_name(k))
                        }
                        None => "a setting's variable (docs/configuration.md lists them)".into(),
                    },
                ));
            } else {
                values.push((path, value.to_string()));
            }
        }
        if problems.is_empty() {
            Ok(EnvOverrides { values })
        } else {
            Err(SettingsError::Env { problems })
        }
    }
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment").interpolater(|_: &Profile, keys: &[&str]| {
            let path: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            env_var_name(&path.join("."))
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (path, raw) in &self.values {
            // Strings; extraction is lossy, so "800" fills a number and "true" a boolean.
            // An empty value unsets an optional setting.
            let value = if raw.is_empty() {
                Value::Empty(Tag::Default, Empty::None)
            } else {
                Value::from(raw.clone())
            };
            let mut dict = &mut root;
            for (i, key) in path.iter().enumerate() {
                if i + 1 == path.len() {
                    dict.insert(key.clone(), value.clone());
                    break;
                }
                let entry = dict
                    .entry(key.clone())
                    .or_insert_with(|| Value::from(Dict::new()));
                if !matches!(entry, Value::Dict(..)) {
                    *entry = Value::from(Dict::new());
                }
                let Value::Dict(_, inner) = entry else {
                    break;
                };
                dict = inner;
            }
        }
        Ok(Profile::Default.collect(root))
    }
}

/// A TOML document as a figment provider (parsed with the `toml` crate).
struct TomlText {
    /// The file it came from, for error messages.
    source: Option<PathBuf>,
    text: String,
}

impl TomlText {
    fn read(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SettingsError::Load(format!(
                "cannot read the settings file {}: {e}",
                path.display()
            ))
        })?;
        Ok(TomlText {
            source: Some(path.to_path_buf()),
            text,
        })
    }
}

impl Provider for TomlText {
    fn metadata(&self) -> Metadata {
        match &self.source {
            Some(path) => Metadata::from("TOML file", path.as_path()),
            None => Metadata::named("TOML text"),
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict: Dict = toml::from_str(&self.text).map_err(|e| {
            let place = match &self.source {
                Some(path) => path.display().to_string(),
                None => "settings".to_owned(),
            };
            figment::Error::from(format!(
                "{place} is not valid TOML: {}",
                e.to_string().trim_end()
            ))
        })?;
        Ok(Profile::Default.collect(dict))
    }
}

/// A figment error as one line per problem: where it came from, which setting, what is wrong.
fn describe(errors: figment::Error) -> String {
    errors
        .into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let source = match (&e.metadata, &e.profile) {
                (Some(md), Some(profile)) if md.name == "environment" => {
                    format!("{} ", md.interpolate(profile, &e.path))
                }
                (Some(md), _) => match &md.source {
                    Some(source) => format!("{source} "),
                    None => String::new(),
                },
                _ => String::new(),
            };
            if path.is_empty() {
                format!("settings: {source}{}", e.kind)
            } else {
                format!("settings: {source}{path}: {}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        })
    }
}

/// The problem of `storage.backend = "sled"` in a build without sled.
pub(crate) fn sled_missing() -> ConfigProblem {
    ConfigProblem::new(
        "storage.backend",
        quoted("sled"),
        "\"wal\" or \"redb\" (this build has no sled support: build dengine with its `sled` \
         feature)",
    )
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// `host:port` with a non-zero port; IPv6 hosts in brackets.
/// The other members dial this node at its own `initial_members` entry, so the entry must be
/// where it listens: its `advertise_addr` when set, else its `listen_addr` (the same port, and
/// the same IP unless it listens on all addresses or the entry is a host name). Returns what
/// was expected, or `None` when the entry matches (or the addresses are malformed, which is
/// reported on their own).
fn own_entry_mismatch(n: &NodeSettings, entry: &str) -> Option<String> {
    if let Some(advertised) = n.advertise_addr.as_deref().filter(|a| !a.is_empty()) {
        return (!entry.eq_ignore_ascii_case(advertised)).then(|| {
            format!(
                "node.advertise_addr ({advertised:?}), since the other members dial this \
                 node at its own entry"
            )
        });
    }
    let listen = n.listen_addr.parse::<SocketAddr>().ok()?;
    let entry_port = entry.rsplit_once(':')?.1.parse::<u16>().ok()?;
    let port_differs = listen.port() != 0 && entry_port != listen.port();
    let ip_differs = !listen.ip().is_unspecified()
        && entry
            .parse::<SocketAddr>()
            .is_ok_and(|e| e.ip() != listen.ip());
    (port_differs || ip_differs).then(|| {
        format!(
            "where this node listens, node.listen_addr ({:?}), since the other members dial \
             it at its own entry; set node.advertise_addr when a proxy or port mapping sits in \
             between",
            n.listen_addr
        )
    })
}

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

/// Levenshtein distance, for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
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

    /// Settings as data, to compare them (the transport's config has no `PartialEq`).
    fn json(s: &Settings) -> serde_json::Value {
        serde_json::to_value(s).unwrap()
    }

    fn fields(err: &SettingsError) -> Vec<&str> {
        err.problems().iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn defaults_validate_once_the_id_is_set() {
        valid().validate().unwrap();
        let err = Settings::default().validate().unwrap_err();
        assert_eq!(fields(&err), ["node.id"], "{err}");
    }

    #[test]
    fn full_toml_example_from_the_docs_parses_and_validates() {
        let s = Settings::from_toml_str(doc_example()).unwrap();
        s.validate().unwrap();
        assert_eq!(s.node.id, 1);
        assert_eq!(s.node.initial_members.len(), 3);
        assert_eq!(s.node.initial_members[&2], "10.0.0.2:7000");
        assert!(s.network.compression);
        assert_eq!(s.network.snapshot_chunk_timeout, Duration::from_secs(15));
        assert_eq!(s.network.listener.max_connections, 64);
        assert_eq!(s.network.member_names[&3], "node3.dengine.internal");
        assert!(s.network.tls.as_ref().unwrap().require_client_cert);
        assert_eq!(s.raft.inbox_len, 8192);
        assert_eq!(
            s.observability.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_ne!(s.raft, RaftSettings::default());
        // The parts handed to the runtime and the transport carry the identity.
        assert_eq!(s.node_config().id, 1);
        let grpc = s.grpc_config();
        assert_eq!((grpc.id, grpc.cluster_id), (1, 42));
    }

    #[test]
    fn docs_and_the_complete_example_cover_every_setting() {
        let doc = include_str!("../../../docs/configuration.md");
        let example: toml::Value = toml::from_str(doc_example()).unwrap();
        let paths = Settings::paths();
        assert!(paths.len() > 60, "{paths:?}");
        for path in &paths {
            let field = path.rsplit('.').next().unwrap();
            assert!(
                doc.contains(&format!("| `{field}` |")),
                "docs/configuration.md has no row for {path}"
            );
            let mut v = &example;
            for part in path.split('.') {
                v = v
                    .get(part)
                    .unwrap_or_else(|| panic!("the complete example lacks {path}"));
            }
        }
        assert!(doc.contains("DENGINE_RAFT__ELECTION_TIMEOUT_MS"));
    }

    #[test]
    fn every_setting_path_has_an_env_override() {
        let defaults = json(&Settings::default());
        for path in Settings::paths() {
            let default = path.split('.').try_fold(&defaults, |v, part| v.get(part));
            let sample = match (path.as_str(), default) {
                ("node.initial_members" | "network.member_names", _) => "1=127.0.0.1:7001".into(),
                ("network.compression", _) => "gzip".into(),
                ("node.initial_cluster_state", _) => "existing".into(),
                ("storage.backend", _) => "redb".into(),
                (_, Some(serde_json::Value::Bool(b))) => (!b).to_string(),
                (p, _) if p.ends_with("require_client_cert") => "true".into(),
                _ => "7".to_string(),
            };
            let s = Settings::load_with_env(None, [(env_var_name(&path), sample)])
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_ne!(json(&s), defaults, "{path} did not change anything");
        }
    }

    #[test]
    fn maps_round_trip_through_toml() {
        let mut s = valid();
        s.node.initial_members.insert(1, "127.0.0.1:7001".into());
        s.node.initial_members.insert(2, "127.0.0.1:7002".into());
        s.network.member_names.insert(2, "two".into());
        let text = toml::to_string(&s).unwrap();
        assert_eq!(json(&Settings::from_toml_str(&text).unwrap()), json(&s));
    }

    #[test]
    fn env_overrides_apply_and_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "[node]\nid = 1\n[raft]\nelection_timeout_ms = 600\ntick_ms = 20\n\
             [observability]\nmetrics_addr = \"127.0.0.1:9000\"\n",
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
            ("DENGINE_NETWORK__LISTENER__MAX_CONNECTIONS", "12"),
            ("DENGINE_NETWORK__RECONNECT_MAX_MS", "900"),
            ("DENGINE_STORAGE__FSYNC", "false"),
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
        assert_eq!(s.network.listener.max_connections, 12);
        assert_eq!(s.network.reconnect_max, Duration::from_millis(900));
        assert!(!s.storage.fsync);
        assert_eq!(
            s.observability.metrics_addr.as_deref(),
            Some("127.0.0.1:9100")
        );

        // An empty value unsets an optional setting, also one the file sets.
        let s = Settings::load_with_env(Some(&path), [("DENGINE_OBSERVABILITY__METRICS_ADDR", "")])
            .unwrap();
        assert_eq!(s.observability.metrics_addr, None);
    }

    #[test]
    fn bad_env_values_are_named_with_the_variable_and_the_expected_type() {
        let err = Settings::load_with_env(
            None,
            [("DENGINE_NODE__ID", "1"), ("DENGINE_RAFT__TICK_MS", "fast")],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SettingsError::Load(_)), "{text}");
        assert!(text.contains("DENGINE_RAFT__TICK_MS"), "{text}");
        assert!(text.contains("raft.tick_ms"), "{text}");
        assert!(text.contains("\"fast\""), "{text}");
        assert!(text.contains("u64"), "{text}");

        let err = Settings::load_with_env(None, [("DENGINE_RAFT__PRE_VOTE", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("DENGINE_RAFT__PRE_VOTE"), "{err}");

        let err = Settings::load_with_env(
            None,
            [("DENGINE_NODE__INITIAL_MEMBERS", "1:127.0.0.1:7001")],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("DENGINE_NODE__INITIAL_MEMBERS"), "{text}");
        assert!(text.contains("id=value"), "{text}");

        let err = Settings::load_with_env(None, [("DENGINE_NODE__INITIAL_MEMBERS", "1=a:1,1=b:2")])
            .unwrap_err();
        assert!(err.to_string().contains("id 1 appears twice"), "{err}");
    }

    #[test]
    fn unknown_env_vars_are_named_all_at_once_with_a_suggestion() {
        let err = Settings::load_with_env(
            None,
            [
                ("DENGINE_NODE__ID", "1"),
                ("DENGINE_RAFT__TICKMS", "20"),
                ("DENGINE_raft__tick_ms", "20"),
                ("DENGINE_SOMETHING_ELSE", "x"),
                // A section is not a setting.
                ("DENGINE_RAFT", "x"),
            ],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SettingsError::Env { .. }), "{text}");
        assert_eq!(
            fields(&err),
            [
                "DENGINE_RAFT__TICKMS",
                "DENGINE_raft__tick_ms",
                "DENGINE_SOMETHING_ELSE",
                "DENGINE_RAFT"
            ],
            "{text}"
        );
        assert!(
            text.contains("did you mean DENGINE_RAFT__TICK_MS?"),
            "{text}"
        );
        assert!(text.contains("use DENGINE_RAFT__TICK_MS"), "{text}");
    }

    #[test]
    fn unknown_or_mistyped_toml_fields_are_refused_naming_file_and_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[node]\nid = 1\n\n[raft]\nelection_timeout = 800\n").unwrap();
        let err = Settings::load_with_env(Some(&path), no_env()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bad.toml"), "{text}");
        assert!(text.contains("election_timeout"), "{text}");
        assert!(text.contains("raft"), "{text}");

        let err = Settings::from_toml_str("[raft]\ntick_ms = \"fast\"\n").unwrap_err();
        assert!(err.to_string().contains("raft.tick_ms"), "{err}");
        let err = Settings::from_toml_str("[nodes]\nid = 1\n").unwrap_err();
        assert!(err.to_string().contains("nodes"), "{err}");
        let err = Settings::from_toml_str("[network]\ncompression = \"zstd\"\n").unwrap_err();
        assert!(err.to_string().contains("\"none\" or \"gzip\""), "{err}");
        let err = Settings::from_toml_str("[node\nid = 1\n").unwrap_err();
        assert!(err.to_string().contains("not valid TOML"), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn the_storage_section_holds_the_backend_and_the_runtimes_policy() {
        let s = Settings::from_toml_str("[storage]\nbackend = \"redb\"\nfsync = false\n").unwrap();
        assert_eq!(s.storage.backend, LogBackend::Redb);
        assert!(!s.node_config().storage.fsync, "fsync reaches the runtime");
        assert_eq!(Settings::default().storage.backend, LogBackend::Wal);
        let err = Settings::from_toml_str("[storage]\nfsynk = false\n").unwrap_err();
        assert!(err.to_string().contains("fsynk"), "{err}");
        let err = Settings::from_toml_str("[storage]\nbackend = \"rocksdb\"\n").unwrap_err();
        assert!(err.to_string().contains("rocksdb"), "{err}");
        let mut sled = valid();
        sled.storage.backend = LogBackend::Sled;
        assert_eq!(
            sled.validate().is_ok(),
            cfg!(feature = "sled"),
            "sled only in builds that have it"
        );
    }

    #[test]
    fn client_sessions_are_off_by_default_and_their_limits_are_checked() {
        assert_eq!(Settings::default().client_sessions.limits(), None);
        let s = Settings::from_toml_str(
            "[client_sessions]\nenabled = true\nmax_sessions = 5\nidle_expiry_ms = 7000\n",
        )
        .unwrap();
        let limits = s.client_sessions.limits().unwrap();
        assert_eq!((limits.max_sessions, limits.idle_expiry_ms), (5, 7000));
        assert_eq!(
            limits.max_unacknowledged, 1024,
            "an unset key keeps its default"
        );
        let err = Settings::from_toml_str("[client_sessions]\nenable = true\n").unwrap_err();
        assert!(err.to_string().contains("enable"), "{err}");
        let mut zero = valid();
        zero.client_sessions.max_unacknowledged = 0;
        zero.client_sessions.idle_expiry_ms = 0;
        let err = zero.validate().unwrap_err();
        let fields = fields(&err);
        assert!(
            fields.contains(&"client_sessions.max_unacknowledged")
                && fields.contains(&"client_sessions.idle_expiry_ms"),
            "{fields:?}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Settings::load_with_env(Some(Path::new("/nonexistent/dengine.toml")), no_env())
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/dengine.toml"),
            "{err}"
        );
    }

    #[test]
    fn durations_beyond_a_day_are_refused_instead_of_overflowing_deadlines() {
        let mut s = valid();
        s.client.propose_timeout_ms = u64::MAX;
        s.network.reconnect_max = Duration::from_millis(u64::MAX);
        let err = s.validate().unwrap_err();
        let fields = fields(&err);
        assert!(fields.contains(&"client.propose_timeout_ms"), "{fields:?}");
        assert!(fields.contains(&"network.reconnect_max_ms"), "{fields:?}");
        assert!(err.to_string().contains("<= 86400000 (one day)"), "{err}");
    }

    #[test]
    fn validate_reports_every_problem_with_its_path_value_and_range() {
        let mut s = Settings::default(); // node.id = 0
        s.node.listen_addr = "localhost:7000".into();
        s.node.advertise_addr = Some("no-port".into());
        s.node.admin_addr = Some("0.0.0.0:7001".into());
        s.node.initial_members.insert(2, "10.0.0.2:7000".into());
        s.node.initial_members.insert(3, "10.0.0.3".into());
        s.raft.tick_ms = 100;
        s.raft.election_timeout_ms = 150;
        s.raft.heartbeat_interval_ms = 200;
        s.raft.lease_drift_ms = 150;
        s.raft.max_inflight_messages = 0;
        s.raft.max_proposal_bytes = 100 << 20;
        s.raft.inbox_len = 0;
        s.network.snapshot_chunk_bytes = 1024;
        s.network.snapshot_chunk_timeout = Duration::ZERO;
        s.network.peer_queue_len = 0;
        s.network.reconnect_initial = Duration::from_secs(5);
        s.network.listener.max_connections = 0;
        s.network.tls = Some(TlsConfig::default());
        s.client_api.tls = Some(TlsConfig {
            server_name: Some("x".into()),
            ..TlsConfig::default()
        });
        s.client_api.max_connections = 0;
        s.client.max_pending = 0;
        s.client.read_timeout_ms = 0;
        s.observability.metrics_addr = Some("metrics:9100".into());
        s.observability.otlp_endpoint = Some("127.0.0.1:4317".into());

        let err = s.validate().unwrap_err();
        let text = err.to_string();
        let fields = fields(&err);
        for expected in [
            "node.id",
            "node.listen_addr",
            "node.advertise_addr",
            "node.admin_addr",
            "node.initial_members",
            "node.initial_members.3",
            "raft.election_timeout_ms",
            "raft.heartbeat_interval_ms",
            "raft.lease_drift_ms",
            "raft.max_inflight_messages",
            "raft.max_uncommitted_bytes",
            "raft.inbox_len",
            "network.snapshot_chunk_bytes",
            "network.snapshot_chunk_timeout_ms",
            "network.peer_queue_len",
            "network.reconnect_max_ms",
            "network.listener.max_connections",
            "network.max_message_bytes",
            "network.tls.cert",
            "network.tls.key",
            "network.tls.ca",
            "client_api.tls.cert",
            "client_api.tls.server_name",
            "client_api.max_connections",
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
            text.contains("raft.election_timeout_ms = 150: allowed >= 2 * raft.tick_ms (200)"),
            "{text}"
        );
        assert!(
            text.contains("network.snapshot_chunk_bytes = 1024: allowed 4096..=67108864"),
            "{text}"
        );
        assert!(
            text.contains("network.max_message_bytes = 67108864: allowed >= 104923136"),
            "{text}"
        );
        assert!(
            text.contains("node.listen_addr = \"localhost:7000\""),
            "{text}"
        );
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
    fn check_files_names_missing_and_misplaced_files() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("node.pem");
        std::fs::write(&cert, "x").unwrap();
        let mut s = valid();
        s.node.data_dir = cert.clone();
        s.network.tls = Some(TlsConfig {
            cert: cert.clone(),
            key: dir.path().join("missing.key"),
            ca: dir.path().to_owned(),
            ..TlsConfig::default()
        });
        s.admin.token_file = Some(dir.path().join("no-token"));
        let err = s.check_files().unwrap_err();
        assert_eq!(
            fields(&err),
            [
                "network.tls.key",
                "network.tls.ca",
                "admin.token_file",
                "node.data_dir"
            ],
            "{err}"
        );
        assert!(err.to_string().contains("missing.key"), "{err}");
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("tick_ms", "tick_ms"), 0);
        assert_eq!(edit_distance("tickms", "tick_ms"), 1);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn the_own_initial_members_entry_must_be_where_the_node_listens() {
        // Before, `--listen-peer 127.0.0.1:7001 --initial-members 1=127.0.0.1:7000` was
        // accepted and recorded an address no peer could reach the member at.
        let with = |listen: &str, advertise: Option<&str>, entry: &str| {
            let mut s = valid();
            s.node.listen_addr = listen.into();
            s.node.advertise_addr = advertise.map(Into::into);
            s.node.initial_members = [(s.node.id, entry.to_string())].into();
            s.validate()
        };
        let err = with("127.0.0.1:7001", None, "127.0.0.1:7000").unwrap_err();
        assert_eq!(
            fields(&err),
            [format!("node.initial_members.{}", valid().node.id)]
        );
        assert!(
            err.to_string()
                .contains("node.listen_addr (\"127.0.0.1:7001\")"),
            "{err}"
        );
        let err = with("10.0.0.1:7000", None, "10.0.0.2:7000").unwrap_err();
        assert!(err.to_string().contains("node.listen_addr"), "{err}");
        let err = with(
            "0.0.0.0:7000",
            Some("node1.example:7000"),
            "node2.example:7000",
        );
        assert!(err.unwrap_err().to_string().contains("node.advertise_addr"));

        // Matching, or not decidable without resolving names: accepted.
        with("127.0.0.1:7000", None, "127.0.0.1:7000").unwrap();
        with("0.0.0.0:7000", None, "10.0.0.1:7000").unwrap();
        with("10.0.0.1:7000", None, "node1.example:7000").unwrap();
        with(
            "0.0.0.0:7000",
            Some("Node1.example:17000"),
            "node1.example:17000",
        )
        .unwrap();
    }
}
