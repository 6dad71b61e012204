//! # dengine-core
//!
//! The Raft consensus protocol as a pure, deterministic state machine: no I/O, no clock, no
//! threads, no randomness of its own. A runtime feeds it inputs — [`Raft::tick`] for time,
//! [`Raft::step`] for messages, [`Raft::propose`] for commands, [`Raft::read_index`] for
//! reads — and carries out the [`Ready`] bundle it hands back: persist, send, apply, in the
//! order documented on [`Ready`]. Completion comes back through
//! [`Raft::on_persisted`] and [`Raft::on_applied`].
//!
//! Implemented: elections with pre-vote and check-quorum, leader stickiness, pipelined
//! replication with flow control and fast conflict backtracking, the current-term commit rule,
//! ReadIndex and lease reads, forwarded follower reads, proposal limits, joint-consensus and
//! single-server membership changes with learners, leader transfer, snapshots and compaction.
//! The contracts that outer crates implement live in [`store`] (`LogReader`, `LogStore`,
//! `StateMachine`, and their one error type, `StorageError`) and [`transport`] (`Transport`,
//! `Inbox`). With feature `memory`, [`store`] also holds the in-memory implementations
//! (`MemoryStore`, `MemoryStateMachine`) that tests, examples and the simulator use.
//!
//! ## Example: three nodes elect a leader and commit an entry
//!
//! (The example uses the in-memory store of feature `memory`.)
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # {
//! use bytes::Bytes;
//! use dengine_core::{Config, EntryPayload, InitialState, Membership, MemoryStore, Message, Raft, Role};
//!
//! let members = Membership::new([1, 2, 3]);
//! let mut nodes: Vec<Raft<MemoryStore>> = (1..=3)
//!     .map(|id| {
//!         let initial = InitialState { membership: members.clone(), ..Default::default() };
//!         Raft::new(Config::new(id), MemoryStore::new(), initial).unwrap()
//!     })
//!     .collect();
//!
//! // One turn of a runtime for every node: persist, report it, route messages, apply.
//! fn run(nodes: &mut [Raft<MemoryStore>], applied: &mut Vec<Bytes>) {
//!     loop {
//!         let mut inbox: Vec<Message> = Vec::new();
//!         for node in nodes.iter_mut() {
//!             while node.has_ready() {
//!                 let ready = node.ready();
//!                 if let Some(write) = &ready.persist {
//!                     node.log_reader().persist_now(write).unwrap(); // "fsync"
//!                     node.on_persisted(write.done());
//!                 }
//!                 inbox.extend(ready.messages);
//!                 for entry in &ready.committed_entries {
//!                     if let (1, EntryPayload::Normal(data)) = (node.id(), &entry.payload) {
//!                         // (node 1's state machine, for the assertion below)
//!                         applied.push(data.clone());
//!                     }
//!                     node.on_applied(entry.index);
//!                 }
//!             }
//!         }
//!         if inbox.is_empty() {
//!             return;
//!         }
//!         for msg in inbox {
//!             let to = (msg.to - 1) as usize;
//!             nodes[to].step(msg).unwrap();
//!         }
//!     }
//! }
//!
//! // Time passes until some node's randomized election timeout fires and it wins.
//! let mut applied = Vec::new();
//! let leader = loop {
//!     nodes.iter_mut().for_each(|n| n.tick());
//!     run(&mut nodes, &mut applied);
//!     if let Some(l) = nodes.iter().position(|n| n.role() == Role::Leader) {
//!         break l;
//!     }
//! };
//!
//! let id = nodes[leader].propose(Bytes::from_static(b"x = 1")).unwrap();
//! run(&mut nodes, &mut applied);
//! assert!(nodes.iter().all(|n| n.commit_index() >= id.index));
//! assert_eq!(applied, [Bytes::from_static(b"x = 1")]);
//! # }
//! ```

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod config;
mod log;
mod log_limit;
mod message;
mod progress;
mod quorum;
mod raft;
mod ready;
mod rng;
pub mod sessions;
pub mod store;
pub mod transport;
mod types;

pub use config::{Config, ConfigError, ConfigProblem};
pub use log_limit::LogLimiter;
pub use message::{
    AppendRequest, AppendResponse, ConflictHint, Heartbeat, HeartbeatResponse, Message,
    MessageBody, ReadCtx, ReadIndexRequest, ReadIndexResponse, VoteRequest, VoteResponse,
};
pub use progress::ReplicationState;
#[cfg(feature = "fault-injection")]
pub use raft::InjectedBug;
pub use raft::{
    InitialState, MembershipChange, MembershipError, PeerProgress, Raft, SnapshotError, StepError,
    TransferError,
};
pub use ready::{FailedRead, PeerRegression, ProposeError, ReadError, ReadMode, ReadState, Ready};
#[cfg(feature = "memory")]
pub use store::MemoryStore;
pub use store::{
    LogReader, LogStore, PersistRequest, Persisted, SnapshotData, StateMachine, StorageError,
    StoredState,
};
pub use transport::{ClusterView, Inbox, InboxError, Transport, TransportError};
pub use types::{
    ENTRY_OVERHEAD_BYTES, Entry, EntryId, EntryPayload, HardState, LeaderHint, LogIndex, MAX_INDEX,
    MAX_TERM, Membership, NodeId, Role, SnapshotMeta, SoftState, Term,
};
