//! # dengine-kv
//!
//! An etcd v3 API compatible key-value store replicated with dengine: the state machine, the
//! watch machinery and the gRPC services. `etcdctl` and etcd client libraries talk to it.
//!
//! * [`KvStateMachine`] implements [`dengine_core::StateMachine`] with etcd's semantics:
//!   a store-wide revision, per-key create/mod revisions and versions, ranges and prefixes,
//!   transactions with compares, compaction, snapshots. Its state is in memory.
//! * [`WatchHub`] keeps a bounded history of recent events; the state machine publishes to
//!   it, the Watch service reads from it.
//! * etcd's authentication and authorization: users, roles and permissions are replicated
//!   state-machine state; every command and query carries the user it runs as and is
//!   checked when applied or served. [`AuthHub`] is a member's view of it (the auth state as
//!   applied, and the member's tokens, which expire after [`DEFAULT_TOKEN_TTL`] without use).
//! * [`kv_services`] builds the tonic routes of the `KV`, `Watch`, `Cluster`, `Maintenance`
//!   and `Auth` services over a [`KvBackend`], the small trait through which the services
//!   reach the replication layer (propose a write, read, membership, status), with the limits
//!   of a [`KvConfig`]. [`LocalBackend`] is a single-member backend without Raft, for tests.
//! * etcd's concurrency services, `Lock` ([`proto::v3lockpb`]) and `Election`
//!   ([`proto::v3electionpb`]), are among those routes: distributed locks and leader
//!   elections built, as etcd's servers build them, on keys queued under a name, transactions,
//!   linearizable reads and waits on the [`WatchHub`], as the requesting user.
//!
//! * Leases: keys that are deleted when their lease expires or is revoked. Expiry is decided
//!   by the leader's clock and applied through the log ([`LeaseHub`], [`LeaseConfig`]); a
//!   lock or a leadership held with a lease ends when the lease does.
//!
//! What is and is not supported is listed in the crate's `README.md`. In short: simple tokens
//! only (no JWT); the MVCC history (reads at past revisions) is bounded by auto-compaction
//! ([`AutoCompaction`]).
//!
//! ## Example: a store without Raft
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use bytes::Bytes;
//! use dengine_kv::proto::dengine::kv::v1::{command, command_response};
//! use dengine_kv::proto::etcdserverpb::PutRequest;
//! use dengine_kv::{KvBackend, LocalBackend, WatchHub, decode_command_response, encode_command};
//!
//! let backend = LocalBackend::new(WatchHub::default(), "http://127.0.0.1:2380").await.unwrap();
//! let put = PutRequest { key: Bytes::from("k"), value: Bytes::from("v"), ..Default::default() };
//! let response = backend.propose(encode_command(command::Op::Put(put))).await.unwrap();
//! match decode_command_response(&response).unwrap() {
//!     command_response::Result::Put(r) => assert_eq!(r.header.unwrap().revision, 1),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # });
//! ```

mod auth;
mod auth_service;
mod backend;
mod compactor;
mod concurrency;
mod config;
mod election_service;
mod error;
mod forward;
mod forward_session;
mod key_range;
mod lease;
mod lease_hub;
mod lease_service;
mod lock_service;
mod member;
mod node_backend;
pub mod proto;
mod quota;
mod routes;
mod service;
mod shared;
mod state_machine;
mod store;
mod unary;
mod unsupported;
mod validate;
mod watch;
mod watch_service;

pub use auth::hub::{AuthConfig, AuthHub, DEFAULT_MAX_TOKENS, DEFAULT_TOKEN_TTL};
pub use auth::password::DEFAULT_PASSWORD_ITERATIONS;
pub use backend::{
    BackendError, HeaderInfo, KvBackend, LOCAL_CLUSTER_ID, LocalBackend, MemberInfo, StatusInfo,
    members_of,
};
#[cfg(feature = "fault-injection")]
pub use config::LeaseFault;
pub use config::{
    AutoCompaction, DEFAULT_AUTO_COMPACTION, DEFAULT_MAX_LEASES, DEFAULT_MAX_RANGE_RESPONSE_BYTES,
    DEFAULT_MAX_REQUEST_BYTES, DEFAULT_QUOTA_BYTES, DEFAULT_STATE_CACHE_BYTES, KvConfig,
    LeaseConfig, StateStorage,
};
pub use error::KvError;
pub use lease_hub::LeaseHub;
pub use member::{Member, MemberError, state_file};
pub use node_backend::NodeBackend;
pub use routes::{add_kv_services, kv_services};
pub use service::ETCD_API_VERSION;
pub use state_machine::{
    KvStateMachine, decode_command_response, decode_query_response, encode_command, encode_query,
};
pub use watch::{Compacted, EventBatch, WatchConfig, WatchFilter, WatchHub};

/// The allocator the `dengine-kv` binary (and `benches/apply.rs`) run on, for
/// `#[global_allocator]`: jemalloc with the `jemalloc` feature (on by default), else mimalloc
/// (also on MSVC, which jemalloc does not support). A put allocates and frees dozens of small
/// buffers across threads (request decoding, the log entry, the response), where glibc's free
/// lists and consolidation cost ~16% of the servers' CPU in `cargo xtask bench e2e`. mimalloc
/// hands a freed block out again only once its page's free list has run out, by which time the
/// block has left the CPU's caches: at 256 clients its allocation path was 13.9% of the
/// servers' CPU, nearly all of it one load (a freed block's link) missing the cache. jemalloc's
/// per-thread caches hand out the block freed last first: 4.0%, and 8.5% more puts per second
/// with 10% less CPU per put (12 alternating pairs; docs/benchmarks.md, 2026-12-07).
///
/// Built from this workspace, jemalloc has `tcache_max:262144` built in (`.cargo/config.toml`
/// sets `JEMALLOC_SYS_WITH_MALLOC_CONF`): a thread keeps freed blocks of up to 256 KiB, where
/// jemalloc's default stops at 32 KiB. The buffers of a batch of puts (the log record, the
/// entries sent to a follower, a connection's frames) are often tens of KiB, and above 32 KiB
/// each one went through the shared arena, under its lock, splitting and merging extents. In
/// nine alternating pairs of `cargo xtask bench e2e` runs it cut the servers' CPU per put by
/// 6.7% at 64 clients and 3.6% at 256, without more resident memory (docs/benchmarks.md,
/// 2026-12-07 15:17).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
pub use tikv_jemallocator::Jemalloc as ServerAllocator;

/// The allocator the `dengine-kv` binary (and `benches/apply.rs`) run on, for
/// `#[global_allocator]`: mimalloc, since the `jemalloc` feature is off or the target is MSVC.
#[cfg(not(all(feature = "jemalloc", not(target_env = "msvc"))))]
pub use mimalloc::MiMalloc as ServerAllocator;
