//! A single-member dengine-kv server (`LocalBackend`) on a free loopback port, shared by the
//! etcd API tests.

#![allow(dead_code)] // Shared by several test crates; each uses a part.

use std::sync::Arc;

use dengine_kv::{KvConfig, LocalBackend, WatchConfig, WatchHub, kv_services};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// Starts the server in the background; its URL (`http://127.0.0.1:PORT`). It stops with the
/// test's runtime, also when the test fails.
pub(crate) async fn serve_local(config: WatchConfig) -> String {
    serve_local_with(config, KvConfig::default()).await
}

/// [`serve_local`] with the services' limits and options from `kv`.
pub(crate) async fn serve_local_with(watch: WatchConfig, kv: KvConfig) -> String {
    start_local(watch, kv).await.0
}

/// [`serve_local_with`], also giving the backend (to load data without the client API's
/// limits).
pub(crate) async fn start_local(watch: WatchConfig, kv: KvConfig) -> (String, Arc<LocalBackend>) {
    let hub = WatchHub::new(watch);
    let backend = Arc::new(
        LocalBackend::new(hub.clone(), "http://127.0.0.1:2380")
            .await
            .unwrap(),
    );
    let routes = kv_services(backend.clone(), hub, backend.auth_hub().clone(), kv);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), backend)
}
