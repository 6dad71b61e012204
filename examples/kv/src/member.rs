//! [`Member`]: one running `dengine-kv` member — a dengine node with a [`KvStateMachine`],
//! a redb log, and one gRPC port serving the etcd v3 API, the Raft peer service, dengine's
//! admin service and write forwarding.

use std::net::SocketAddr;
use std::sync::Arc;

use dengine_net_grpc::{AdminService, GrpcConfig, GrpcTransport, ServerHandle};
use dengine_node::{Node, NodeBuilder, Settings};
use dengine_storage_redb::RedbStore;

use crate::node_backend::NodeBackend;
use crate::service::{KvConfig, add_kv_services};
use crate::state_machine::KvStateMachine;
use crate::watch::WatchHub;

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemberError {
    /// The settings are invalid.
    #[error("{0}")]
    Settings(#[from] dengine_node::settings::SettingsError),
    /// `node.listen_addr` is not a socket address.
    #[error("the listen address {0:?} is not an IP:port address")]
    ListenAddr(String),
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The log store could not be opened.
    #[error("cannot open the log store: {0}")]
    Storage(#[from] dengine_core::StorageError),
    /// The transport or server could not be set up.
    #[error("{0}")]
    Grpc(#[from] dengine_net_grpc::GrpcError),
    /// The node could not start.
    #[error("{0}")]
    Start(#[from] dengine_node::StartError),
}

/// A running member. Stop it with [`shutdown`](Member::shutdown) (graceful) or
/// [`kill`](Member::kill) (as a crash would).
#[derive(Debug)]
pub struct Member {
    node: Node,
    hub: WatchHub,
    server: ServerHandle,
}

impl Member {
    /// Starts a member as `settings` say: the redb log in `<data_dir>/log`, snapshots in
    /// `<data_dir>/snapshots`, bootstrapping from `node.initial_members` only if the log is
    /// empty, everything served on `node.listen_addr`.
    pub async fn start(settings: Settings) -> Result<Member, MemberError> {
        settings.validate()?;
        let addr: SocketAddr = settings
            .node
            .listen_addr
            .parse()
            .map_err(|_| MemberError::ListenAddr(settings.node.listen_addr.clone()))?;
        let data_dir = settings.node.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| MemberError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let store = RedbStore::open_or_create(data_dir.join("log"))?;
        let hub = WatchHub::default();
        let transport = GrpcTransport::new(GrpcConfig::from_settings(&settings))?;
        let cluster_id = settings.node.cluster_id;
        let node = NodeBuilder::new(settings)
            .log_store(store)
            .state_machine(KvStateMachine::new(hub.clone()))
            .transport(transport.clone())
            .snapshot_dir(data_dir.join("snapshots"))
            .start_or_bootstrap()
            .await?;
        let backend = NodeBackend::new(node.clone(), cluster_id);
        let admin = AdminService::new(node.clone()).server();
        let forward = backend.forward_service();
        let kv_backend = Arc::new(backend);
        let watch_hub = hub.clone();
        let served = transport
            .serve_with(addr, Arc::new(node.inbox()), move |routes| {
                let routes = routes.add_service(admin).add_service(forward);
                add_kv_services(routes, kv_backend, hub, KvConfig::default())
            })
            .await;
        match served {
            Ok(server) => Ok(Member {
                node,
                hub: watch_hub,
                server,
            }),
            Err(e) => {
                node.shutdown().await;
                Err(e.into())
            }
        }
    }

    /// The dengine node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Where the member listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Graceful shutdown: leadership handed over if leading, pending requests finished or
    /// failed, storage flushed, server stopped.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        self.hub.close();
        self.server.shutdown().await;
    }

    /// Stops abruptly, as a crash would (for tests).
    pub async fn kill(self) {
        self.node.kill().await;
        self.hub.close();
        self.server.shutdown().await;
    }
}
