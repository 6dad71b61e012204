//! [`start`]: a node with the default pieces (a write-ahead log, gRPC) in one call.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dengine_core::StateMachine;
use dengine_net_grpc::tonic::service::Routes;
use dengine_net_grpc::{
    GrpcError, GrpcTransport, Listener, ListenerLimits, ServeOptions, ServerHandle, ServerTls,
    TlsConfig, serve_routes,
};
use dengine_node::{Node, NodeBuilder, StartError};
use dengine_storage_redb::RedbStore;
use dengine_storage_wal::WalStore;

use crate::admin::AdminService;
use crate::client_service::ClientService;
use crate::identity::{IdentityError, MemberIdentity};
use crate::observability::{self, ObservabilityError, ObservabilityGuard};
use crate::settings::{ClusterState, LogBackend, Settings, SettingsError};

/// Connections the admin listener accepts at once (operators and tools, not clients).
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Why [`start`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartNodeError {
    /// The settings are invalid.
    #[error("{0}")]
    Settings(#[from] SettingsError),
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An address setting is not a socket address.
    #[error("{setting} {value:?} is not an IP:port socket address")]
    Address {
        /// Which setting.
        setting: &'static str,
        /// Its value.
        value: String,
    },
    /// The log store could not be opened.
    #[error("cannot open the log store: {0}")]
    Storage(#[from] dengine_core::StorageError),
    /// The application could not open its state machine (a durable one's files) before the
    /// node started.
    #[error("cannot open the state machine: {0}")]
    StateMachine(String),
    /// The member identity file could not be read or written.
    #[error("{0}")]
    Identity(#[from] IdentityError),
    /// The data directory belongs to another member, or this member lost its data: starting
    /// would let a member that forgot what it acknowledged take part as if it had not.
    #[error("{0}")]
    LostStorage(String),
    /// The application's services do not fit the settings (e.g. a client API without
    /// `node.client_addr`).
    #[error("{0}")]
    Services(String),
    /// A secret or token file is unusable.
    #[error("{0}")]
    Secret(String),
    /// Metrics or tracing export could not be set up.
    #[error("{0}")]
    Observability(#[from] ObservabilityError),
    /// The transport or a listener could not be set up.
    #[error("{0}")]
    Grpc(#[from] GrpcError),
    /// The node could not start.
    #[error("{0}")]
    Start(#[from] StartError),
    /// `node.restore_from` names a backup that cannot be used, or cannot be used here.
    #[error("node.restore_from: {0}")]
    Backup(String),
}

/// The gRPC services of a node, by listener. [`start_with`] hands them to the application,
/// which adds its own.
#[derive(Debug)]
pub struct Services {
    /// Served on the peer listener (`node.listen_addr`) next to the Raft peer service: the
    /// application's traffic between members, such as write forwarding. Check callers with
    /// [`GrpcTransport::authorize_peer`].
    pub peer: Routes,
    /// Served on the client listener (`node.client_addr`): the application's API. `None`
    /// serves no client listener.
    pub client: Option<Routes>,
    /// Where the client listener is bound (the real port when `node.client_addr` has port
    /// 0), if `node.client_addr` is set: for the application to advertise.
    pub client_addr: Option<SocketAddr>,
    /// Whether the client listener uses TLS (`[client_api.tls]`).
    pub client_tls: bool,
}

/// A node started by [`start`]: the node, its listeners and its observability exporters.
#[derive(Debug)]
pub struct Running {
    node: Node,
    peer: ServerHandle,
    client: Option<ServerHandle>,
    admin: Option<ServerHandle>,
    observability: Option<ObservabilityGuard>,
}

impl Running {
    /// The node: client API, administration, status.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Where the peer listener listens (the real port if `listen_addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.peer.local_addr()
    }

    /// Where the client listener listens, if there is one.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client.as_ref().map(ServerHandle::local_addr)
    }

    /// Where the admin listener listens, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(ServerHandle::local_addr)
    }

    /// Where Prometheus metrics are served, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.observability.as_ref().and_then(|o| o.metrics_addr())
    }

    /// Shuts down gracefully: hands leadership over if this node leads, finishes or fails
    /// pending requests, flushes storage, then stops the listeners and the exporters.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        stop_servers(self.peer, self.client, self.admin).await;
        if let Some(o) = self.observability {
            let _ = o.shutdown();
        }
    }

    /// Stops abruptly, as a crash would (for tests): no leadership hand-over, no flush; only
    /// what the log store already synced survives.
    pub async fn kill(self) {
        self.node.kill().await;
        stop_servers(self.peer, self.client, self.admin).await;
    }
}

async fn stop_servers(
    peer: ServerHandle,
    client: Option<ServerHandle>,
    admin: Option<ServerHandle>,
) {
    for server in [Some(peer), client, admin].into_iter().flatten() {
        server.shutdown().await;
    }
}

/// Starts a node as `settings` say, applying committed commands to `state_machine`:
///
/// * validates the settings and the files they name;
/// * binds every listener (peer, client, admin) first, so that a start that cannot bind
///   writes nothing;
/// * sets up metrics and trace export if `[observability]` asks for them;
/// * checks the member identity of `node.data_dir` (see the `identity` module): a directory
///   of another member, or a member that lost its log, is refused; a new directory asks the
///   other members whether they knew this member id before;
/// * opens (or creates) the log store `storage.backend` names (default: the write-ahead log)
///   in `<node.data_dir>/log`, keeps snapshots in
///   `<node.data_dir>/snapshots` and spools incoming ones in `<node.data_dir>/incoming`;
/// * bootstraps a new cluster from `node.initial_members` if the store is empty, members are
///   given and `node.initial_cluster_state` is `new`; otherwise restarts from the store
///   (never bootstrapping it again) or waits, as an empty node, to be added by the leader;
/// * serves the peer service on `node.listen_addr`, the admin service on
///   `node.admin_addr` (if set) and the client service ([`ClientService`]: proposals,
///   exactly-once sessions, reads, the leader, for the `dengine-client` crate) on
///   `node.client_addr` (if set), with the forwarding of followers' requests to the leader
///   ([`ForwardService`](crate::ForwardService)) on the peer listener.
///
/// Must be called within a tokio runtime.
pub async fn start<M: StateMachine>(
    settings: Settings,
    state_machine: M,
) -> Result<Running, StartNodeError> {
    let max_request_bytes = usize::try_from(settings.raft.max_proposal_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(crate::settings::MESSAGE_HEADROOM_BYTES);
    start_with(
        settings,
        state_machine,
        move |node, transport, mut services| {
            let service = ClientService::new(node.clone(), max_request_bytes)
                .with_forwarding(transport.clone());
            // Served whether or not this member has a client listener: followers forward to
            // whichever member leads.
            services.peer = services
                .peer
                .add_service(service.forward_service(transport.clone()).server());
            if services.client_addr.is_some() {
                services.client = Some(Routes::new(service.server()));
            }
            services
        },
    )
    .await
}

/// [`start`], serving the application's own gRPC services: `add` gets the started node, its
/// transport and the [`Services`] (the peer service already in), and returns them with its
/// own services added — e.g. a client API that calls `node.propose`, served on
/// `node.client_addr`. The built-in [`ClientService`] is not served unless `add` adds it:
/// an application with its own API (and its own rules about who may change what) decides
/// whether raw proposals are reachable from its clients.
pub async fn start_with<M, F>(
    settings: Settings,
    state_machine: M,
    add: F,
) -> Result<Running, StartNodeError>
where
    M: StateMachine,
    F: FnOnce(&Node, &GrpcTransport, Services) -> Services,
{
    start_with_transport(settings, state_machine, |grpc| grpc, add).await
}

/// [`start_with`], sending the node's peer messages through `wrap(grpc)` instead of the gRPC
/// transport itself: for a transport wrapper such as
/// [`FaultyTransport`](dengine_net_grpc::fault::FaultyTransport) in fault-injection tests. The
/// server side (what the node receives) is the gRPC transport's, unchanged.
pub async fn start_with_transport<M, F, T, W>(
    settings: Settings,
    state_machine: M,
    wrap: W,
    add: F,
) -> Result<Running, StartNodeError>
where
    M: StateMachine,
    F: FnOnce(&Node, &GrpcTransport, Services) -> Services,
    T: dengine_core::Transport,
    W: FnOnce(GrpcTransport) -> T,
{
    settings.validate()?;
    settings.check_files()?;
    // Every listener is bound before anything is written: a port in use must not leave a
    // bootstrapped log behind.
    let peer_listener = Listener::bind(
        address("node.listen_addr", &settings.node.listen_addr)?,
        "peer",
    )
    .await?;
    let client_listener = match &settings.node.client_addr {
        Some(a) => Some(Listener::bind(address("node.client_addr", a)?, "client").await?),
        None => None,
    };
    let admin_listener = match &settings.node.admin_addr {
        Some(a) => Some(Listener::bind(address("node.admin_addr", a)?, "admin").await?),
        None => None,
    };
    let client_tls = settings
        .client_api
        .tls
        .as_ref()
        .map(server_tls)
        .transpose()?;
    let admin_tls = settings.admin.tls.as_ref().map(server_tls).transpose()?;
    let admin_token = settings
        .admin
        .token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let observability = if settings.observability.metrics_addr.is_some()
        || settings.observability.otlp_endpoint.is_some()
    {
        Some(observability::install(&settings.observability)?)
    } else {
        None
    };

    let data_dir = settings.node.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| StartNodeError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let found = MemberIdentity::load(&data_dir)?;
    let log_dir = data_dir.join("log");
    check_identity(&settings, found.as_ref(), &log_dir)?;
    let fresh = found.is_none() && !log_dir.exists();
    let seed = backup_to_restore(&settings, fresh)?;
    let identity =
        found.unwrap_or_else(|| MemberIdentity::new(settings.node.cluster_id, settings.node.id));
    let mut config = settings.grpc_config();
    config.incarnation = identity.incarnation;
    config.snapshot_spool_dir = Some(data_dir.join("incoming"));
    let transport = GrpcTransport::new(config)?;
    if fresh {
        // Before anything is written: a refused start leaves the directory as it was.
        ask_members_about_me(&transport, &settings, identity.incarnation).await?;
    }

    let cluster_state = settings.node.initial_cluster_state;
    let client_limits = ListenerLimits {
        max_connections: settings.client_api.max_connections,
        ..settings.network.listener.clone()
    };
    let admin_limits = ListenerLimits {
        max_connections: ADMIN_MAX_CONNECTIONS,
        ..settings.network.listener.clone()
    };
    let parts = NodeParts {
        config: settings.node_config(),
        sessions: settings.client_sessions.limits(),
        state_machine,
        transport: wrap(transport.clone()),
        snapshot_dir: data_dir.join("snapshots"),
        // An empty node told to join waits for the leader; everything else founds the cluster
        // of the initial members or restarts from its store.
        bootstrap: (!(fresh && cluster_state == ClusterState::Existing))
            .then(|| settings.node.initial_members.clone()),
        seed,
    };
    let node = match settings.storage.backend {
        LogBackend::Wal => parts.start(WalStore::open_or_create(&log_dir)?).await?,
        LogBackend::Redb => parts.start(RedbStore::open_or_create(&log_dir)?).await?,
        #[cfg(feature = "sled")]
        LogBackend::Sled => {
            let store = dengine_storage_sled::SledStore::open_or_create(&log_dir)?;
            parts.start(store).await?
        }
        // `validate` refuses it above; kept for the compiler.
        #[cfg(not(feature = "sled"))]
        LogBackend::Sled => {
            return Err(SettingsError::Invalid {
                problems: vec![crate::settings::sled_missing()],
            }
            .into());
        }
    };

    tokio::spawn(measure_data_dir(node.clone(), data_dir.clone()));

    let mut client_routes = None;
    let bound_client = client_listener.as_ref().map(Listener::local_addr);
    let has_client_tls = client_tls.is_some();
    let peer = transport.serve_peers(peer_listener, Arc::new(node.inbox()), |routes| {
        let services = add(
            &node,
            &transport,
            Services {
                peer: routes,
                client: None,
                client_addr: bound_client,
                client_tls: has_client_tls,
            },
        );
        client_routes = services.client;
        services.peer
    });
    let client = match (client_listener, client_routes) {
        (Some(listener), Some(mut routes)) => {
            let router = std::mem::take(routes.axum_router_mut());
            *routes.axum_router_mut() = router.route(
                "/metrics",
                observability::client_port_metrics(observability.as_ref()),
            );
            Some(serve_routes(
                listener,
                routes,
                client_tls,
                &client_limits,
                watch_sender(),
                // Clients may be etcd's (the KV example): HTTP/1.1 for /metrics, and the
                // scheme etcd's Go client puts in `:authority`.
                ServeOptions {
                    http1: true,
                    authority_with_scheme: true,
                },
            ))
        }
        (Some(listener), None) => {
            tracing::warn!(
                addr = %listener.local_addr(),
                "node.client_addr is set, but the application serves no client API on it"
            );
            None
        }
        (None, Some(_)) => {
            node.shutdown().await;
            return Err(StartNodeError::Services(
                "the application serves a client API, but node.client_addr is not set: set \
                 it to the address clients connect to"
                    .into(),
            ));
        }
        (None, None) => None,
    };
    let admin = admin_listener.map(|listener| {
        let service = AdminService::new(node.clone()).server_with_token(admin_token);
        serve_routes(
            listener,
            Routes::new(service),
            admin_tls,
            &admin_limits,
            watch_sender(),
            ServeOptions::default(),
        )
    });
    if !identity_saved(&data_dir, &identity)
        && let Err(e) = identity.save(&data_dir)
    {
        node.shutdown().await;
        return Err(e.into());
    }
    Ok(Running {
        node,
        peer,
        client,
        admin,
        observability,
    })
}

/// What a node is started with, whichever log store it gets.
struct NodeParts<M, T> {
    config: dengine_node::NodeConfig,
    /// Client sessions' limits, when they are on.
    sessions: Option<dengine_node::SessionLimits>,
    state_machine: M,
    transport: T,
    snapshot_dir: std::path::PathBuf,
    /// `Some(initial members)`: bootstrap an empty store with them (or restart); `None`: start
    /// (an empty node then waits to be added).
    bootstrap: Option<std::collections::BTreeMap<dengine_core::NodeId, String>>,
    /// The state to found the cluster with (`node.restore_from`), if bootstrapping.
    seed: Option<dengine_node::Seed>,
}

impl<M: StateMachine, T: dengine_core::Transport> NodeParts<M, T> {
    async fn start<S: dengine_core::LogStore>(self, store: S) -> Result<Node, StartError> {
        let mut builder = NodeBuilder::new(self.config)
            .log_store(store)
            .state_machine(self.state_machine)
            .transport(self.transport)
            .snapshot_dir(self.snapshot_dir);
        if let Some(limits) = self.sessions {
            builder = builder.client_sessions(limits);
        }
        match self.bootstrap {
            Some(members) => builder.start_or_bootstrap_from(members, self.seed).await,
            None => builder.start().await,
        }
    }
}

/// The backup `node.restore_from` names, read and checked before anything is written, when
/// this start founds a new cluster; `None` when there is none or the data directory already
/// holds state (the setting is then ignored, as `initial_members` is).
fn backup_to_restore(
    settings: &Settings,
    fresh: bool,
) -> Result<Option<dengine_node::Seed>, StartNodeError> {
    let Some(path) = &settings.node.restore_from else {
        return Ok(None);
    };
    if !fresh {
        tracing::info!(
            backup = %path.display(),
            "node.restore_from is ignored: the data directory already holds state"
        );
        return Ok(None);
    }
    if settings.node.initial_cluster_state == ClusterState::Existing {
        return Err(StartNodeError::Backup(format!(
            "{} would found a new cluster, but node.initial_cluster_state = \"existing\" joins \
             one (a joining member gets its state from the leader): unset node.restore_from, \
             or found a new cluster with initial_cluster_state = \"new\"",
            path.display()
        )));
    }
    if settings.node.initial_members.is_empty() {
        return Err(StartNodeError::Backup(format!(
            "{} founds a new cluster, which needs node.initial_members",
            path.display()
        )));
    }
    let seed = crate::backup::read(path).map_err(|e| StartNodeError::Backup(e.to_string()))?;
    tracing::info!(
        backup = %path.display(),
        index = seed.index,
        bytes = seed.data.len(),
        "founding the cluster from a backup"
    );
    Ok(Some(seed))
}

fn watch_sender() -> tokio::sync::watch::Sender<bool> {
    tokio::sync::watch::channel(false).0
}

fn identity_saved(data_dir: &Path, identity: &MemberIdentity) -> bool {
    MemberIdentity::load(data_dir).is_ok_and(|found| found.as_ref() == Some(identity))
}

fn address(setting: &'static str, value: &str) -> Result<SocketAddr, StartNodeError> {
    value.parse().map_err(|_| StartNodeError::Address {
        setting,
        value: value.to_string(),
    })
}

/// The data directory must belong to this member of this cluster, and a member that was
/// initialized must still have its log.
fn check_identity(
    settings: &Settings,
    found: Option<&MemberIdentity>,
    log_dir: &Path,
) -> Result<(), StartNodeError> {
    let Some(found) = found else {
        return Ok(());
    };
    let (cluster, member) = (settings.node.cluster_id, settings.node.id);
    let dir = settings.node.data_dir.display();
    if found.cluster_id != cluster || found.member_id != member {
        return Err(StartNodeError::LostStorage(format!(
            "the data directory {dir} belongs to member {} of cluster {}, but the settings say \
             member {member} of cluster {cluster}: point node.data_dir at this member's own \
             directory (or fix node.id / node.cluster_id)",
            found.member_id, found.cluster_id
        )));
    }
    if !log_dir.exists() {
        return Err(StartNodeError::LostStorage(format!(
            "member {member}'s log {} is missing although its data directory {dir} was \
             initialized (incarnation {:016x}): the member lost what it had acknowledged and \
             must not rejoin as if it had not. Restore the directory from a backup, or replace \
             the member: remove it from the cluster, wipe {dir}, add it again under a new id \
             and start it with initial_cluster_state = \"existing\" (docs/operations.md, \
             \"Replacing a member\")",
            log_dir.display(),
            found.incarnation
        )));
    }
    Ok(())
}

/// A node with a new data directory asks the other initial members what they know before it
/// founds or joins the cluster. It refuses to start when one of them has seen this member id
/// with another incarnation (it lost its data), when the cluster retired the id, or when a
/// `new` node would found a second cluster next to one that exists without it.
async fn ask_members_about_me(
    transport: &GrpcTransport,
    settings: &Settings,
    incarnation: u64,
) -> Result<(), StartNodeError> {
    let me = settings.node.id;
    let mut probes = tokio::task::JoinSet::new();
    for (&peer, address) in &settings.node.initial_members {
        if peer == me {
            continue;
        }
        let (transport, address) = (transport.clone(), address.clone());
        probes.spawn(async move {
            let report = transport
                .probe(peer, &address, Duration::from_secs(2))
                .await;
            (peer, report)
        });
    }
    let mut unreachable = Vec::new();
    let replace = "replace it as docs/operations.md, \"Replacing a member\", describes: remove \
                   it from the cluster, wipe its data directory, add it again under a new id and \
                   start it with initial_cluster_state = \"existing\"";
    while let Some(joined) = probes.join_next().await {
        let Ok((peer, report)) = joined else { continue };
        let report = match report {
            Ok(report) => report,
            Err(e) => {
                unreachable.push(format!("{peer} ({e})"));
                continue;
            }
        };
        let view = &report.view;
        if report.known_incarnation != 0 && report.known_incarnation != incarnation {
            return Err(StartNodeError::LostStorage(format!(
                "member {me}'s data directory is empty, but member {peer} has seen member {me} \
                 before (incarnation {:016x}, cluster term {}): this member lost its data and \
                 must not rejoin as if it had none; {replace}",
                report.known_incarnation, view.term
            )));
        }
        if view.membership.is_retired(me) {
            return Err(StartNodeError::LostStorage(format!(
                "member {peer} reports that member id {me} was removed from the cluster (ids are \
                 never reused; the highest id so far is {}): add this node under a new id",
                view.membership.highest_id
            )));
        }
        let exists = view.term > 0 || view.last_index > 0;
        if settings.node.initial_cluster_state == ClusterState::New
            && exists
            && !view.membership.contains(me)
        {
            return Err(StartNodeError::LostStorage(format!(
                "member {peer} already belongs to a running cluster (term {}) of which member \
                 {me} is not part: to join it, add this node with a membership change, then \
                 start it with initial_cluster_state = \"existing\"",
                view.term
            )));
        }
    }
    if !unreachable.is_empty() {
        tracing::info!(
            node = me,
            "could not ask members {} whether they know this member; starting as a new member",
            unreachable.join(", ")
        );
    }
    Ok(())
}

fn server_tls(t: &TlsConfig) -> Result<ServerTls, StartNodeError> {
    Ok(ServerTls::from_config(t)?)
}

/// Reads the admin token file (see [`dengine_net_grpc::read_secret`]).
fn read_token(path: &Path) -> Result<String, StartNodeError> {
    dengine_net_grpc::read_secret(path).map_err(|e| match e {
        GrpcError::Config(message) => StartNodeError::Secret(message),
        other => other.into(),
    })
}

/// How often `dengine_data_dir_bytes` is measured.
const DATA_DIR_EVERY: Duration = Duration::from_secs(5);

/// Sets `dengine_data_dir_bytes` every [`DATA_DIR_EVERY`] until the node stops.
async fn measure_data_dir(node: Node, dir: std::path::PathBuf) {
    loop {
        let walked = dir.clone();
        if let Ok(bytes) = tokio::task::spawn_blocking(move || bytes_on_disk(&walked)).await {
            metrics::gauge!(dengine_node::metric_names::DATA_DIR_BYTES).set(bytes as f64);
        }
        tokio::select! {
            _ = node.stopped() => return,
            _ = tokio::time::sleep(DATA_DIR_EVERY) => {}
        }
    }
}

/// The space the files under `path` take on disk (allocated blocks, as `du` counts them;
/// preallocated log segments count in full), without following symbolic links.
fn bytes_on_disk(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else {
            return 0;
        };
        return entries.flatten().map(|e| bytes_on_disk(&e.path())).sum();
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        meta.blocks() * 512
    }
    #[cfg(not(unix))]
    {
        meta.len()
    }
}

#[cfg(test)]
mod data_dir_tests {
    use super::bytes_on_disk;

    #[test]
    fn bytes_on_disk_counts_every_file_below() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("log")).unwrap();
        std::fs::write(dir.path().join("log/a"), vec![1u8; 100_000]).unwrap();
        std::fs::write(dir.path().join("b"), vec![1u8; 50_000]).unwrap();
        let bytes = bytes_on_disk(dir.path());
        assert!(bytes >= 150_000, "{bytes}");
        assert!(bytes < 150_000 + 64 * 1024, "{bytes}");
        assert_eq!(bytes_on_disk(&dir.path().join("missing")), 0);
    }
}

#[cfg(test)]
mod restore_tests {
    use super::{StartNodeError, backup_to_restore};
    use crate::Settings;
    use crate::settings::ClusterState;

    fn with_backup(dir: &std::path::Path) -> Settings {
        let path = dir.join("backup.db");
        std::fs::write(&path, crate::backup::encode(5, b"state")).unwrap();
        let mut s = Settings::default();
        s.node.id = 1;
        s.node.initial_members = [(1, "127.0.0.1:7000".to_string())].into();
        s.node.restore_from = Some(path);
        s
    }

    #[test]
    fn a_backup_is_read_only_when_founding_a_new_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = with_backup(dir.path());
        let seed = backup_to_restore(&s, true).unwrap().unwrap();
        assert_eq!(
            (seed.index, &seed.data.to_bytes().unwrap()[..]),
            (5, &b"state"[..])
        );
        // A directory that holds state: ignored.
        assert!(backup_to_restore(&s, false).unwrap().is_none());
        // Joining an existing cluster with a backup: refused, naming the conflict.
        s.node.initial_cluster_state = ClusterState::Existing;
        match backup_to_restore(&s, true) {
            Err(StartNodeError::Backup(e)) => assert!(e.contains("existing"), "{e}"),
            other => panic!("expected a Backup error, got {:?}", other.map(|_| ())),
        }
        // No initial members to found a cluster with: refused.
        s.node.initial_cluster_state = ClusterState::New;
        s.node.initial_members.clear();
        assert!(matches!(
            backup_to_restore(&s, true),
            Err(StartNodeError::Backup(_))
        ));
    }
}
