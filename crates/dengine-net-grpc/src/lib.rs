//! # dengine-net-grpc
//!
//! The peer transport of dengine on gRPC ([tonic]): an implementation of
//! [`dengine_core::Transport`] and the server that feeds a node's [`dengine_core::Inbox`].
//!
//! * **Replication is pipelined.** Appends, heartbeats and read-index traffic to a peer travel
//!   on one long-lived bidirectional stream; the peer's responses come back on the same
//!   stream. Nothing waits for a round trip.
//! * **Elections are never stuck behind replication.** Votes, pre-votes and timeout-now use
//!   their own unary calls.
//! * **Sends never block.** Each peer has a bounded queue; when it is full, or the peer is
//!   down, messages are dropped and counted ([`TransportStats`]) — Raft resends.
//! * **Reconnects back off** exponentially with jitter; a peer that is down costs one connect
//!   attempt per backoff period.
//! * **Snapshots stream in checksummed chunks** with a timeout per chunk, and resume from the
//!   receiver's offset after a bad chunk or a broken stream.
//! * **Clusters cannot mix.** Every request carries the cluster id and the sender and
//!   recipient ids; a mismatch is refused with `FAILED_PRECONDITION` and logged.
//! * **Peers are authenticated** ([`auth`]): with mutual TLS, a client certificate must name
//!   the member a request claims to come from; a shared cluster secret keeps out blind
//!   injection. Traffic from a node that a committed configuration removed is refused, and
//!   the removed node is told so. Every refusal is counted and logged at a bounded rate.
//! * **Every listener is hardened** ([`serve_routes`], [`ListenerLimits`]): bounded
//!   connections and streams, a handshake deadline, keep-alive pings, back-off when `accept`
//!   fails. Snapshots being received are spooled to disk, one upload per sender, within a
//!   total byte bound.
//! * **TLS and mutual TLS** (rustls) from PEM files; optional gzip compression.
//! * The wire types of the admin API (`dengine.admin.v1.Admin`, [`admin_pb`]); the service
//!   on a node lives in the `dengine` facade.
//! * [`fault::FaultyTransport`] wraps any transport to drop, delay, duplicate or block
//!   messages, for tests and chaos runs.
//!
//! The wire protocol is `proto/dengine/raft/v1/peer.proto` (package `dengine.raft.v1`),
//! compiled at build time by a pure-Rust compiler: building needs no `protoc`.
//!
//! ## Wiring two nodes
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use bytes::Bytes;
//! use dengine_core::{Heartbeat, Inbox, InboxError, Message, MessageBody, Transport};
//! use dengine_net_grpc::{GrpcConfig, GrpcTransport};
//!
//! /// A node's inbox; a real runtime pushes into its event loop's queue instead.
//! #[derive(Default)]
//! struct Collect(Mutex<Vec<Message>>);
//! impl Inbox for Collect {
//!     fn deliver(&self, m: Message) -> Result<(), InboxError> {
//!         self.0.lock().unwrap().push(m);
//!         Ok(())
//!     }
//!     fn deliver_snapshot(&self, m: Message, _data: Bytes) -> Result<(), InboxError> {
//!         self.deliver(m)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster_id = 42;
//! let one = GrpcTransport::new(GrpcConfig::new(1, cluster_id))?;
//! let two = GrpcTransport::new(GrpcConfig::new(2, cluster_id))?;
//! let inbox_two = Arc::new(Collect::default());
//! let server_two = two.serve("127.0.0.1:0".parse()?, inbox_two.clone()).await?;
//! let _server_one = one.serve("127.0.0.1:0".parse()?, Arc::new(Collect::default())).await?;
//!
//! // Node 1 learns where node 2 listens (normally from the membership), then sends.
//! one.set_peer(2, server_two.local_addr().to_string());
//! let heartbeat = MessageBody::Heartbeat(Heartbeat { commit: 0, round: 1 });
//! one.send(Message { from: 1, to: 2, term: 1, body: heartbeat });
//!
//! while inbox_two.0.lock().unwrap().is_empty() {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! assert_eq!(inbox_two.0.lock().unwrap()[0].from, 1);
//! # Ok(())
//! # }
//! ```

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod auth;
mod config;
pub mod convert;
pub mod fault;
mod listener;
mod server;
mod snapshot;
mod stats;
mod transport;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use config::{GrpcConfig, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, TlsConfig, id_map, millis};
pub use listener::{Listener, ListenerLimits, ServerTls, serve_routes};
pub use server::{PeerService, ServerHandle};
pub use stats::TransportStats;
/// The tonic version this crate is built on, for building clients and servers that match.
pub use tonic;
pub use transport::{GrpcTransport, ProbeReport};

/// The generated wire types and gRPC stubs, one module per protobuf package.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    /// `dengine.*` packages.
    pub mod dengine {
        /// `dengine.raft.*`.
        pub mod raft {
            /// `dengine.raft.v1`: the peer protocol.
            pub mod v1 {
                tonic::include_proto!("dengine.raft.v1");
            }
        }
        /// `dengine.admin.*`.
        pub mod admin {
            /// `dengine.admin.v1`: the admin service.
            pub mod v1 {
                tonic::include_proto!("dengine.admin.v1");
            }
        }
    }
}

/// The admin service's wire types and stubs (`dengine.admin.v1`).
pub use proto::dengine::admin::v1 as admin_pb;
/// The peer protocol's wire types and stubs (`dengine.raft.v1`).
pub use proto::dengine::raft::v1 as pb;

/// Reads a configuration file (a PEM file, a secret), naming it in the error.
pub fn read_file(path: &std::path::Path, what: &'static str) -> Result<Vec<u8>, GrpcError> {
    std::fs::read(path).map_err(|e| GrpcError::TlsFile {
        what,
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Reads a secret or token file: its first line, trimmed, which must be 16+ printable ASCII
/// characters without spaces.
pub fn read_secret(path: &std::path::Path) -> Result<String, GrpcError> {
    let bytes = read_file(path, "secret file")?;
    let text = String::from_utf8_lossy(&bytes);
    let secret = text.lines().next().unwrap_or("").trim().to_string();
    if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(GrpcError::Config(format!(
            "{} must hold a secret of at least 16 printable ASCII characters without spaces on \
             its first line (e.g. `openssl rand -hex 32 > {}`)",
            path.display(),
            path.display()
        )));
    }
    Ok(secret)
}

/// Why the transport could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcError {
    /// A setting is out of range.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// A TLS or secret file could not be read.
    #[error("cannot read the {what} at {path}: {detail}")]
    TlsFile {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        detail: String,
    },
    /// The TLS configuration was refused (e.g. a malformed PEM).
    #[error("invalid TLS configuration: {detail}")]
    Tls {
        /// What rustls or tonic reported.
        detail: String,
    },
    /// A peer address is not a valid `host:port` or URI.
    #[error("invalid peer address {address:?}: {detail}")]
    Address {
        /// The address.
        address: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Connecting to a peer failed.
    #[error("cannot connect to {address}: {detail}")]
    Connect {
        /// The peer's address.
        address: String,
        /// The cause.
        detail: String,
    },
    /// The server could not bind its address.
    #[error("cannot listen on {addr}: {detail}; is another process using the port?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        detail: String,
    },
}
