//! Deterministic simulation and correctness checking for dengine.
//!
//! This crate is the harness that proves the protocol in `dengine-core`: it runs a cluster of
//! 3–7 real cores in one thread, joined by a simulated network that loses, duplicates, delays
//! and reorders messages and can be partitioned, with simulated disks whose un-synced writes a
//! crash loses, pauses, clock skew, and a client workload of puts, compare-and-sets and
//! linearizable reads. One `u64` seed decides everything, so a failing seed replays exactly.
//!
//! After every step it checks Election Safety, State Machine Safety, Leader Completeness,
//! Log Matching and that commit and applied indexes never go back; at the end it checks that
//! every acknowledged write is committed and that the whole client history is linearizable
//! ([`linearizability`]), and that the cluster converges once the faults stop (liveness).
//!
//! ```
//! let report = dengine_sim::run(&dengine_sim::SimConfig::new(7)).unwrap();
//! assert!(report.stats.ops_checked > 0);
//! ```
//!
//! [`runtime`] does the same with the production runtime: real `dengine-node` nodes on paused
//! single-threaded tokio runtimes, a simulated network and simulated disks, clients through
//! the node's public API (`cargo xtask sim-node`).

pub mod config;
pub mod fuzz;
pub mod invariants;
pub mod kv;
pub mod linearizability;
pub mod network;
pub mod node;
pub mod rng;
pub mod runner;
pub mod runtime;
pub mod sim;

pub use config::{Faults, SimConfig};
pub use sim::{Failure, Report, Stats, run};
