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
//! * **Few system calls under load.** Every HTTP/2 connection (served, and opened to other
//!   members) gathers its writes until its flush and gives its task one turn first, so the
//!   responses and messages that are ready together leave in one write.
//! * **TLS and mutual TLS** (rustls) from PEM files; optional gzip compression.
//! * The wire types of the admin API (`dengine.admin.v1.Admin`, [`admin_pb`]) and of the
//!   client API (`dengine.client.v1.Client`, [`client_pb`]); the services on a node live in
//!   the `dengine` facade, the client in the `dengine-client` crate.
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
//! use dengine_core::{Heartbeat, Inbox, InboxError, Message, MessageBody, SnapshotData, Transport};
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
//!     fn deliver_snapshot(&self, m: Message, _data: SnapshotData) -> Result<(), InboxError> {
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
mod authority;
mod common;
mod config;
pub mod convert;
mod cork;
mod error;
pub mod fault;
mod files;
mod listener;
pub mod proto;
mod server;
mod snapshot;
mod stats;
mod transport;

pub use config::{
    GrpcConfig, ListenerLimits, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, TlsConfig, id_map, millis,
};
pub use error::GrpcError;
pub use files::{read_file, read_secret};
pub use listener::{Listener, ServeOptions, ServerHandle, ServerTls, serve_routes};
/// The admin service's wire types and stubs (`dengine.admin.v1`).
pub use proto::admin_pb;
pub use proto::client_pb;
/// The peer protocol's wire types and stubs (`dengine.raft.v1`).
pub use proto::pb;
pub use server::PeerService;
pub use stats::TransportStats;
/// The tonic version this crate is built on, for building clients and servers that match.
pub use tonic;
pub use transport::{GrpcTransport, ProbeReport};
