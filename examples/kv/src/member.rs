//! [`Member`]: one running `dengine-kv` member — a dengine node (started by
//! [`dengine::start_with`]: redb log, snapshots, peer and admin services) with a
//! [`KvStateMachine`], and the etcd v3 API plus write forwarding served on the same port.

use std::net::SocketAddr;
use std::sync::Arc;

use dengine::{Node, Running, Settings, StartNodeError};

use crate::config::KvConfig;
use crate::node_backend::NodeBackend;
use crate::service::add_kv_services;
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

impl Member {
    /// Starts a member as `settings` say: the redb log in `<data_dir>/log`, snapshots in
    /// `<data_dir>/snapshots`, bootstrapping from `node.initial_members` only if the log is
    /// empty, metrics and traces if `[observability]` asks for them, everything served on
    /// `node.listen_addr`.
    pub async fn start(settings: Settings) -> Result<Member, MemberError> {
        Member::start_with_config(settings, KvConfig::default()).await
    }

    /// [`start`](Member::start), with the etcd API's limits and options from `config`.
    pub async fn start_with_config(
        settings: Settings,
        config: KvConfig,
    ) -> Result<Member, MemberError> {
        let hub = WatchHub::default();
        let cluster_id = settings.node.cluster_id;
        let services_hub = hub.clone();
        let state_machine = KvStateMachine::new(hub.clone());
        let auth = state_machine.auth_hub().clone();
        let running = dengine::start_with(settings, state_machine, move |node, routes| {
            let backend = NodeBackend::new(node.clone(), cluster_id).with_config(config.clone());
            let routes = routes.add_service(backend.forward_service());
            add_kv_services(routes, Arc::new(backend), services_hub, auth, config)
        })
        .await?;
        Ok(Member { running, hub })
    }

    /// [`start`](Member::start), sending peer messages through a
    /// [`FaultyTransport`](dengine_net_grpc::fault::FaultyTransport) whose faults the returned
    /// handle changes (`seed` makes its random choices repeatable). For the chaos harness.
    #[cfg(feature = "fault-injection")]
    pub async fn start_faulty(
        settings: Settings,
        seed: u64,
    ) -> Result<(Member, dengine_net_grpc::fault::FaultHandle), MemberError> {
        use dengine_net_grpc::fault::FaultyTransport;
        let hub = WatchHub::default();
        let cluster_id = settings.node.cluster_id;
        let services_hub = hub.clone();
        let state_machine = KvStateMachine::new(hub.clone());
        let auth = state_machine.auth_hub().clone();
        let mut handle = None;
        let running = dengine::start_with_transport(
            settings,
            state_machine,
            |grpc| {
                let faulty = FaultyTransport::new(grpc, seed);
                handle = Some(faulty.handle());
                faulty
            },
            move |node, routes| {
                let backend = NodeBackend::new(node.clone(), cluster_id);
                let routes = routes.add_service(backend.forward_service());
                add_kv_services(
                    routes,
                    Arc::new(backend),
                    services_hub,
                    auth,
                    KvConfig::default(),
                )
            },
        )
        .await?;
        let member = Member { running, hub };
        match handle {
            Some(handle) => Ok((member, handle)),
            None => unreachable!("start_with_transport calls wrap before it returns Ok"),
        }
    }

    /// The dengine node.
    pub fn node(&self) -> &Node {
        self.running.node()
    }

    /// Where the member listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.running.local_addr()
    }

    /// Where Prometheus metrics are served, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running.metrics_addr()
    }

    /// Graceful shutdown: leadership handed over if leading, pending requests finished or
    /// failed, storage flushed, watches ended, server stopped.
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
