//! [`Member`]: one running `dengine-kv` member — a dengine node (started by
//! [`dengine::start_with_transport`]: redb log, snapshots, peer and admin listeners) with a
//! [`KvStateMachine`], the etcd v3 API on the client listener and write forwarding between
//! members on the peer listener.

use std::net::SocketAddr;
use std::sync::Arc;

use dengine::{Node, Running, Services, Settings, StartNodeError};
use dengine_net_grpc::GrpcTransport;

use crate::auth::hub::AuthHub;
use crate::compactor;
use crate::config::{KvConfig, LeaseConfig, StateStorage};
use crate::lease_hub::LeaseHub;
use crate::node_backend::NodeBackend;
use crate::routes::add_kv_services;
use crate::state_machine::KvStateMachine;
use crate::watch::WatchHub;

/// Why a member could not start.
pub type MemberError = StartNodeError;

/// A running member. Stop it with [`shutdown`](Member::shutdown) (graceful) or
/// [`kill`](Member::kill) (as a crash would).
#[derive(Debug)]
pub struct Member {
    running: Running,
    /// Closed when the member stops, so that open watch streams end instead of hanging.
    hub: WatchHub,
}

/// What the state machine publishes to, for the member's services.
struct Hubs {
    watch: WatchHub,
    auth: AuthHub,
    leases: LeaseHub,
}

/// Adds the member's services: forwarding on the peer listener, the etcd API on the client
/// listener.
fn services(
    node: &Node,
    transport: &GrpcTransport,
    services: Services,
    hubs: Hubs,
    cluster_id: u64,
    config: KvConfig,
) -> Services {
    let Hubs {
        watch: hub,
        auth,
        leases,
    } = hubs;
    let scheme = if services.client_tls { "https" } else { "http" };
    let client_urls = if config.advertise_client_urls.is_empty() {
        services
            .client_addr
            .map(|a| vec![format!("{scheme}://{a}")])
            .unwrap_or_default()
    } else {
        config.advertise_client_urls.clone()
    };
    let backend = Arc::new(
        NodeBackend::new(node.clone(), cluster_id, transport.clone(), client_urls)
            .with_config(config.clone())
            .with_lease_hub(leases),
    );
    compactor::spawn(backend.clone(), hub.clone(), config.auto_compaction);
    let peer = services.peer.add_service(backend.forward_service());
    #[cfg(feature = "fault-injection")]
    let (peer, routes) = if config.dengine_client_api {
        // Bounded like the etcd API's requests, with room for the envelope; followers
        // forward the requests that ask for it, as under `dengine::start`.
        let max = config.max_request_bytes.saturating_add(64 << 10);
        let service =
            dengine::ClientService::new(node.clone(), max).with_forwarding(transport.clone());
        (
            peer.add_service(service.forward_service(transport.clone()).server()),
            services
                .client
                .unwrap_or_default()
                .add_service(service.server()),
        )
    } else {
        (peer, services.client.unwrap_or_default())
    };
    #[cfg(not(feature = "fault-injection"))]
    let routes = services.client.unwrap_or_default();
    let client = add_kv_services(routes, backend, hub, auth, config);
    Services {
        peer,
        client: Some(client),
        ..services
    }
}

/// What a member's start created before the node's own checks ran.
struct Created {
    /// The data directory, if it did not exist.
    data_dir: Option<std::path::PathBuf>,
    /// The state file's directory, if it did not exist.
    state_dir: Option<std::path::PathBuf>,
}

impl Created {
    /// Removes them again (the data directory only if nothing else was written in it).
    fn remove(&self) {
        if let Some(dir) = &self.state_dir
            && let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), "could not remove the new state directory: {e}");
        }
        if let Some(dir) = &self.data_dir {
            // Fails, as it should, if the node wrote anything else there.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Where a member with [`StateStorage::Durable`] keeps its state: `<data_dir>/state/kv.redb`.
pub fn state_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("state").join("kv.redb")
}

impl Member {
    /// Starts a member as `settings` say: the redb log in `<data_dir>/log`, snapshots in
    /// `<data_dir>/snapshots`, bootstrapping from `node.initial_members` only if the data
    /// directory is new, metrics and traces if `[observability]` asks for them; the etcd API
    /// on `node.client_addr` (which must be set), peers on `node.listen_addr`, the admin API
    /// on `node.admin_addr` if set.
    pub async fn start(settings: Settings, config: KvConfig) -> Result<Member, MemberError> {
        Self::start_wrapped(settings, config, |grpc| grpc).await
    }

    async fn start_wrapped<T, W>(
        settings: Settings,
        config: KvConfig,
        wrap: W,
    ) -> Result<Member, MemberError>
    where
        T: dengine_core::Transport,
        W: FnOnce(GrpcTransport) -> T,
    {
        let hub = WatchHub::default();
        let cluster_id = settings.node.cluster_id;
        // A start that fails writes nothing: what opening the state file created (the file,
        // its directory, the data directory) is removed again if the node does not start.
        let data_dir = settings.node.data_dir.clone();
        let created = Created {
            data_dir: (!data_dir.exists()).then(|| data_dir.clone()),
            state_dir: state_file(&data_dir)
                .parent()
                .filter(|dir| !dir.exists())
                .map(std::path::Path::to_path_buf),
        };
        let state_machine = match config.state {
            StateStorage::Memory => KvStateMachine::new(hub.clone()),
            StateStorage::Durable { cache_bytes } => KvStateMachine::open(
                hub.clone(),
                AuthHub::default(),
                &state_file(&settings.node.data_dir),
                cache_bytes,
            )
            .map_err(|e| {
                created.remove();
                StartNodeError::StateMachine(e.to_string())
            })?,
        };
        let hubs = Hubs {
            watch: hub.clone(),
            auth: state_machine.auth_hub().clone(),
            leases: state_machine.lease_hub().clone(),
        };
        // A lease is extended by the longest election timeout when a new leader takes it
        // over (the raft timeout is random in [t, 2t)).
        let mut config = config;
        let election_max =
            std::time::Duration::from_millis(settings.raft.election_timeout_ms.saturating_mul(2));
        let timing = LeaseConfig::for_election_timeout(election_max);
        config.leases.extend = config.leases.extend.max(timing.extend);
        config.leases.min_ttl_secs = config.leases.min_ttl_secs.max(timing.min_ttl_secs);
        let started = dengine::start_with_transport(
            settings,
            state_machine,
            wrap,
            move |node, transport, s| services(node, transport, s, hubs, cluster_id, config),
        )
        .await;
        match started {
            Ok(running) => Ok(Member { running, hub }),
            Err(e) => {
                // The state machine (and its file) was dropped with the failed start.
                created.remove();
                Err(e)
            }
        }
    }

    /// [`start`](Member::start), sending peer messages through a
    /// [`FaultyTransport`](dengine_net_grpc::fault::FaultyTransport) whose faults the returned
    /// handle changes (`seed` makes its random choices repeatable). For the chaos harness.
    #[cfg(feature = "fault-injection")]
    pub async fn start_faulty(
        settings: Settings,
        config: KvConfig,
        seed: u64,
    ) -> Result<(Member, dengine_net_grpc::fault::FaultHandle), MemberError> {
        use dengine_net_grpc::fault::FaultyTransport;
        let mut handle = None;
        let member = Self::start_wrapped(settings, config, |grpc| {
            let faulty = FaultyTransport::new(grpc, seed);
            handle = Some(faulty.handle());
            faulty
        })
        .await?;
        match handle {
            Some(handle) => Ok((member, handle)),
            None => unreachable!("start_with_transport calls wrap before it returns Ok"),
        }
    }

    /// The dengine node.
    pub fn node(&self) -> &Node {
        self.running.node()
    }

    /// Where the member's peer listener listens.
    pub fn peer_addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    /// Where clients connect (the etcd API).
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.running.client_addr()
    }

    /// Where the admin API listens, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.running.admin_addr()
    }

    /// Where Prometheus metrics are served, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running.metrics_addr()
    }

    /// Graceful shutdown: leadership handed over if leading, pending requests finished or
    /// failed, storage flushed, watches ended, listeners stopped.
    pub async fn shutdown(self) {
        self.hub.close();
        self.running.shutdown().await;
    }

    /// Stops abruptly, as a crash would (for tests).
    pub async fn kill(self) {
        self.hub.close();
        self.running.kill().await;
    }
}
