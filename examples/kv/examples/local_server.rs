//! A single-member dengine-kv server without Raft ([`LocalBackend`]), for trying the etcd API
//! by hand:
//!
//! ```text
//! cargo run -p dengine-kv --example local_server -- 127.0.0.1:2379
//! etcdctl --endpoints=127.0.0.1:2379 put foo bar
//! etcdctl --endpoints=127.0.0.1:2379 get --prefix fo
//! ```

use std::sync::Arc;

use dengine_kv::{KvConfig, LocalBackend, WatchHub, kv_services};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2379".to_string());
    let hub = WatchHub::default();
    let backend = Arc::new(LocalBackend::new(hub.clone(), "http://127.0.0.1:2380").await?);
    let auth = backend.auth_hub().clone();
    let routes = kv_services(backend, hub, auth, KvConfig::default());
    eprintln!("dengine-kv (local, no Raft) serving the etcd v3 API on {addr}");
    tonic::transport::Server::builder()
        .add_routes(routes)
        .serve(addr.parse()?)
        .await?;
    Ok(())
}
