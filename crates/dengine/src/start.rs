//! [`start`]: a node with the default pieces (redb, gRPC) in one call.

use std::net::SocketAddr;

use dengine_core::StateMachine;
use dengine_net_grpc::tonic::service::Routes;
use dengine_net_grpc::{GrpcConfig, GrpcError, GrpcTransport, ServerHandle};
use dengine_node::observability::{self, ObservabilityError, ObservabilityGuard};
use dengine_node::settings::SettingsError;
use dengine_node::{Node, NodeBuilder, Settings, StartError};
use dengine_storage_redb::RedbStore;

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
    /// `node.listen_addr` is not a socket address.
    #[error("node.listen_addr {0:?} is not an IP:port socket address")]
    ListenAddr(String),
    /// The log store could not be opened.
    #[error("cannot open the log store: {0}")]
    Storage(#[from] dengine_core::StorageError),
    /// Metrics or tracing export could not be set up.
    #[error("{0}")]
    Observability(#[from] ObservabilityError),
    /// The transport or its server could not be set up.
    #[error("{0}")]
    Grpc(#[from] GrpcError),
    /// The node could not start.
    #[error("{0}")]
    Start(#[from] StartError),
}

/// A node started by [`start`]: the node, its gRPC server and its observability exporters.
#[derive(Debug)]
pub struct Running {
    node: Node,
    server: ServerHandle,
    observability: Option<ObservabilityGuard>,
}

impl Running {
    /// The node: client API, administration, status.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Where the peer and admin services listen (the real port if `listen_addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where Prometheus metrics are served, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.observability.as_ref().and_then(|o| o.metrics_addr())
    }

    /// Shuts down gracefully: hands leadership over if this node leads, finishes or fails
    /// pending requests, flushes storage, then stops the server and the exporters.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        self.server.shutdown().await;
        if let Some(o) = self.observability {
            let _ = o.shutdown();
        }
    }
}

impl Running {
    /// Stops abruptly, as a crash would (for tests): no leadership hand-over, no flush; only
    /// what the log store already synced survives.
    pub async fn kill(self) {
        self.node.kill().await;
        self.server.shutdown().await;
    }
}

/// Starts a node as `settings` say, applying committed commands to `state_machine`:
///
/// * validates the settings;
/// * sets up metrics and trace export if `[observability]` asks for them;
/// * opens (or creates) the redb log store in `<node.data_dir>/log` and keeps snapshots in
///   `<node.data_dir>/snapshots`;
/// * bootstraps a new cluster from `node.initial_members` if the store is empty and members
///   are given, otherwise restarts from the store (never bootstrapping it again) or waits, as
///   an empty node, to be added by the leader;
/// * serves the peer and admin gRPC services on `node.listen_addr`.
///
/// Must be called within a tokio runtime.
pub async fn start<M: StateMachine>(
    settings: Settings,
    state_machine: M,
) -> Result<Running, StartNodeError> {
    start_with(settings, state_machine, |_, routes| routes).await
}

/// [`start`], serving more gRPC services on the node's port: `add` gets the started node and
/// the routes (peer and admin services already in) and returns them with the application's
/// own services added — e.g. a client API that calls `node.propose`.
pub async fn start_with<M, F>(
    settings: Settings,
    state_machine: M,
    add: F,
) -> Result<Running, StartNodeError>
where
    M: StateMachine,
    F: FnOnce(&Node, Routes) -> Routes,
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
    F: FnOnce(&Node, Routes) -> Routes,
    T: dengine_core::Transport,
    W: FnOnce(GrpcTransport) -> T,
{
    settings.validate()?;
    let addr: SocketAddr = settings
        .node
        .listen_addr
        .parse()
        .map_err(|_| StartNodeError::ListenAddr(settings.node.listen_addr.clone()))?;
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
    let store = RedbStore::open_or_create(data_dir.join("log"))?;
    let transport = GrpcTransport::new(GrpcConfig::from_settings(&settings))?;
    let node = NodeBuilder::new(settings)
        .log_store(store)
        .state_machine(state_machine)
        .transport(wrap(transport.clone()))
        .snapshot_dir(data_dir.join("snapshots"))
        .start_or_bootstrap()
        .await?;
    let served = transport
        .serve_node(addr, &node, |routes| add(&node, routes))
        .await;
    let server = match served {
        Ok(server) => server,
        Err(e) => {
            node.shutdown().await;
            return Err(e.into());
        }
    };
    Ok(Running {
        node,
        server,
        observability,
    })
}
