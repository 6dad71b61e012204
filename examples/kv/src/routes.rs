//! [`kv_services`]: every etcd service of a member as one set of tonic routes.

use std::sync::Arc;

use tonic::service::Routes;

use crate::auth::hub::AuthHub;
use crate::auth_service::AuthService;
use crate::backend::KvBackend;
use crate::config::KvConfig;
use crate::election_service::ElectionService;
use crate::lease;
use crate::lease_service::LeaseService;
use crate::lock_service::LockService;
use crate::proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::service::{ClusterService, KvService, MaintenanceService};
use crate::shared::Shared;
use crate::unary::LeanKv;
use crate::unsupported::NamesMissing;
use crate::watch::WatchHub;
use crate::watch_service::WatchService;

/// The etcd services over one backend: `KV`, `Watch`, `Cluster`, `Maintenance`, `Auth`,
/// `Lease`, and etcd's concurrency services `Lock` (`v3lockpb`) and `Election`
/// (`v3electionpb`); a method missing from an implemented service is answered
/// `UNIMPLEMENTED` with a message naming it. `hub` and `auth` must be the ones the backend's
/// [`KvStateMachine`](crate::KvStateMachine) publishes to, and so must the backend's lease hub.
/// The leader's lease keeper (`lease.rs`) runs from here until `hub` closes: call this
/// inside a tokio runtime.
///
/// Serve them with tonic:
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use dengine_kv::{KvConfig, LocalBackend, WatchHub, kv_services};
///
/// let hub = WatchHub::default();
/// let backend = Arc::new(LocalBackend::new(hub.clone(), "http://127.0.0.1:2380").await?);
/// let auth = backend.auth_hub().clone();
/// let routes = kv_services(backend, hub, auth, KvConfig::default());
/// tonic::transport::Server::builder()
///     .add_routes(routes)
///     .serve("127.0.0.1:2379".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
pub fn kv_services<B: KvBackend>(
    backend: Arc<B>,
    hub: WatchHub,
    auth: AuthHub,
    config: KvConfig,
) -> Routes {
    add_kv_services(Routes::default(), backend, hub, auth, config)
}

/// [`kv_services`], added to existing `routes` (to serve them on a port shared with other
/// services, such as dengine's peer and admin services).
pub fn add_kv_services<B: KvBackend>(
    routes: Routes,
    backend: Arc<B>,
    hub: WatchHub,
    auth: AuthHub,
    config: KvConfig,
) -> Routes {
    lease::spawn_keeper(
        backend.clone(),
        backend.lease_hub().clone(),
        hub.clone(),
        config.leases,
    );
    let shared = Arc::new(Shared {
        backend,
        hub,
        auth,
        config,
    });
    routes
        .add_service(LeanKv::new(KvService {
            shared: shared.clone(),
        }))
        .add_service(NamesMissing(WatchServer::new(WatchService::new(
            shared.clone(),
        ))))
        .add_service(NamesMissing(ClusterServer::new(ClusterService {
            shared: shared.clone(),
        })))
        .add_service(NamesMissing(AuthServer::new(AuthService::new(
            shared.clone(),
        ))))
        .add_service(NamesMissing(MaintenanceServer::new(MaintenanceService {
            shared: shared.clone(),
        })))
        .add_service(NamesMissing(LockServer::new(LockService::new(
            shared.clone(),
        ))))
        .add_service(NamesMissing(ElectionServer::new(ElectionService::new(
            shared.clone(),
        ))))
        .add_service(NamesMissing(LeaseServer::new(LeaseService { shared })))
}
