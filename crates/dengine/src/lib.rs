//! # dengine
//!
//! A Raft consensus engine: embed it to build replicated, strongly consistent services
//! without writing consensus yourself. You implement a [`StateMachine`]; dengine replicates
//! the commands proposed to it through Raft and applies them, in the same order, on every
//! node.
//!
//! This crate gathers the workspace's crates behind features:
//!
//! | Feature | Default | Brings |
//! |---|---|---|
//! | `server` | yes | [`start`], [`Settings`], the admin and client services, [`observability`]; implies `wal`, `redb` and `grpc` |
//! | `wal` | yes | [`WalStore`], the write-ahead log store (the default of [`start`]) |
//! | `redb` | yes | [`RedbStore`], the durable log store on redb |
//! | `sled` | no | `SledStore`, the durable log store on sled |
//! | `grpc` | yes | [`grpc`]: the gRPC peer transport and the admin API's wire types |
//!
//! With the defaults, [`start`] runs a node in one call: the log store of `storage.backend`
//! (the write-ahead log unless set) under `node.data_dir`,
//! snapshots beside it, gRPC peer and admin services on `node.listen_addr`, metrics and
//! traces as `[observability]` says. [`start_with`] does the same and serves the
//! application's own gRPC services on that port too (the etcd-compatible example in
//! `examples/kv` serves its client API this way). Without `server`, assemble a node from
//! [`NodeBuilder`] and a [`NodeConfig`] with your own store and transport.
//!
//! ```no_run
//! # #[cfg(feature = "server")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use dengine::core::store::MemoryStateMachine;
//! use dengine::{Consistency, Settings};
//!
//! // node.toml sets node.id, node.listen_addr, node.data_dir and, on first start,
//! // node.initial_members; DENGINE_* environment variables override it.
//! let settings = Settings::load(Some("node.toml".as_ref()))?;
//! let running = dengine::start(settings, MemoryStateMachine::new()).await?;
//! let node = running.node();
//! node.propose("x=1".into()).await?;
//! let x = node.read("x".into(), Consistency::Linearizable).await?;
//! assert_eq!(x, "1");
//! running.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! The pieces are documented in their crates: [`core`] (the protocol), [`dengine_node`]
//! (runtime, [`NodeConfig`], [`Node`]), `dengine_storage_redb`, `dengine_net_grpc`; the
//! server kit ([`settings`], [`observability`], [`start`]) is this crate's own.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

/// The sans-I/O protocol core (`dengine-core`): the `Raft` state machine and the contracts
/// (`LogStore`, `StateMachine`, `Transport`).
pub use dengine_core as core;
pub use dengine_core::{
    Entry, EntryPayload, LogIndex, LogStore, Membership, MembershipChange, NodeId, SnapshotMeta,
    StateMachine, StorageError, Transport,
    store::{Command, Snapshot},
};
/// The gRPC transport and admin service (`dengine-net-grpc`).
#[cfg(feature = "grpc")]
pub use dengine_net_grpc as grpc;
pub use dengine_node::{
    AdminError, Consistency, Leadership, Node, NodeBuilder, NodeConfig, ProposeError, ReadError,
    Seed, SessionId, SessionLimits, SessionRefusal, StartError, Status, config, metric_names,
};
#[cfg(feature = "redb")]
pub use dengine_storage_redb::RedbStore;
#[cfg(feature = "sled")]
pub use dengine_storage_sled::SledStore;
#[cfg(feature = "wal")]
pub use dengine_storage_wal::WalStore;

#[cfg(feature = "server")]
mod admin;
#[cfg(feature = "server")]
pub mod backup;
#[cfg(feature = "server")]
mod client_forward;
#[cfg(feature = "server")]
pub mod client_service;
#[cfg(feature = "server")]
mod client_status;
#[cfg(feature = "server")]
pub mod identity;
#[cfg(feature = "server")]
pub mod observability;
#[cfg(feature = "server")]
mod process_metrics;
#[cfg(feature = "server")]
pub mod settings;
#[cfg(feature = "server")]
mod start;
#[cfg(feature = "server")]
pub use admin::{AdminService, AdminToken, admin_status};
#[cfg(feature = "server")]
pub use client_forward::ForwardService;
#[cfg(feature = "server")]
pub use client_service::ClientService;
#[cfg(feature = "server")]
pub use settings::Settings;
#[cfg(feature = "server")]
pub use start::{Running, Services, StartNodeError, start, start_with, start_with_transport};

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(all(doctest, feature = "server"))]
#[doc = include_str!("../../../README.md")]
mod readme {}
