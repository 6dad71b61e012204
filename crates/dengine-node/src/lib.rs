//! # dengine-node
//!
//! The runtime that drives the sans-I/O Raft core ([`dengine_core::Raft`]) with a
//! [`LogStore`](dengine_core::LogStore), a [`StateMachine`](dengine_core::StateMachine) and a
//! [`Transport`](dengine_core::Transport).
//!
//! One tokio task per node owns the core (the *event loop*): it ticks it from a
//! `raft.tick_ms` interval, steps peer messages from the node's [`NodeInbox`], and carries
//! out every [`Ready`](dengine_core::Ready) in the order `docs/protocol.md` prescribes —
//! messages out, one `LogStore::persist` (one sync) for everything proposed in the turn
//! (group commit), committed entries to the apply task. The apply task owns the state
//! machine: it applies in order and in batches, answers waiting proposers, serves reads after
//! the entries before them, and builds and installs snapshots off the loop.
//!
//! - [`NodeBuilder`] assembles and starts a node: [`bootstrap`](NodeBuilder::bootstrap) for a
//!   brand-new cluster, [`start`](NodeBuilder::start) to restart (or to join as an empty
//!   node; [`join`](NodeBuilder::join) also tells the transport where the members are). A
//!   store that holds state is never bootstrapped again. With
//!   [`snapshot_dir`](NodeBuilder::snapshot_dir) the newest snapshots are kept as files, so a
//!   state machine that is not durable survives log compaction across restarts.
//! - [`Node`] is the handle: [`propose`](Node::propose), [`read`](Node::read) with a
//!   [`Consistency`], membership changes, leader transfer, snapshots, [`status`](Node::status),
//!   a subscription to role, leader and membership changes
//!   ([`watch_leadership`](Node::watch_leadership)) and graceful [`shutdown`](Node::shutdown).
//! - [`NodeConfig`] ([`config`]) is what the runtime runs with: the node's id and the
//!   protocol's timing and limits, write, snapshot, client and shutdown policy. No addresses
//!   or files: those belong to the transport and to the server that assembles the node (the
//!   `dengine` facade's `Settings` loads a whole file and hands each part its section).
//! - [`metric_names`] lists every metric recorded through the `metrics` facade.
//! - `testing::LocalNetwork` (feature `testing`) connects nodes in one process;
//!   `testing::MemorySnapshots` keeps a node's snapshots in memory. With them,
//!   [`NodeBuilder::rng_seed`] and a tokio runtime whose clock is paused, a node runs
//!   deterministically (every clock read goes through tokio's clock): `dengine-sim` runs the
//!   runtime under simulation that way. `RuntimeBug` (feature `fault-injection`) re-introduces
//!   runtime mistakes for its bug-catching runs.
//!
//! ## Example: a three-node cluster in one process
//!
//! ```
//! # #[cfg(feature = "testing")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//!
//! use bytes::Bytes;
//! use dengine_core::store::{MemoryStateMachine, MemoryStore};
//! use dengine_node::testing::LocalNetwork;
//! use dengine_node::{Consistency, NodeBuilder, NodeConfig, ProposeError};
//!
//! let network = LocalNetwork::new();
//! let members: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("local-{id}"))).collect();
//! let mut nodes = Vec::new();
//! for id in 1..=3 {
//!     let mut config = NodeConfig::new(id);
//!     config.raft.tick_ms = 10;
//!     config.raft.election_timeout_ms = 150;
//!     config.raft.heartbeat_interval_ms = 30;
//!     let builder = NodeBuilder::new(config)
//!         .log_store(MemoryStore::new())
//!         .state_machine(MemoryStateMachine::new())
//!         .transport(network.transport(id));
//!     network.register(id, builder.inbox());
//!     nodes.push(builder.bootstrap(members.clone()).await?);
//! }
//!
//! // Propose on any node; a follower answers with the leader to retry on.
//! let mut target = 0;
//! let previous = loop {
//!     match nodes[target].propose(Bytes::from_static(b"x=1")).await {
//!         Ok(previous) => break previous,
//!         Err(e) => match e.leader() {
//!             Some((leader, _address)) => target = (leader - 1) as usize,
//!             None => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
//!         },
//!     }
//! };
//! assert_eq!(previous, ""); // MemoryStateMachine answers the key's previous value
//!
//! // A linearizable read on any node sees the write.
//! let value = nodes[2].read(Bytes::from_static(b"x"), Consistency::Linearizable).await?;
//! assert_eq!(value, "1");
//!
//! for node in &nodes {
//!     node.shutdown().await;
//! }
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! ```

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod api;
#[cfg(feature = "fault-injection")]
mod bugs;
mod builder;
pub mod config;
mod error;
mod inbox;
pub mod metric_names;
mod node;
mod runtime;
mod sessions;
mod snapshot_dir;
#[cfg(feature = "testing")]
pub mod testing;

pub use api::{Consistency, Leadership, PeerStatus, Status};
#[cfg(feature = "fault-injection")]
pub use bugs::RuntimeBug;
pub use builder::{NodeBuilder, Seed};
pub use config::NodeConfig;
pub use dengine_core::sessions::{SessionId, SessionLimits, SessionRefusal};
pub use error::{AdminError, ProposeError, ReadError, StartError};
pub use inbox::NodeInbox;
pub use node::Node;
