//! Pieces every durable dengine `LogStore` backend shares, so that the redb and sled crates
//! hold only what is specific to their database:
//!
//! - [`blocking`]: database calls on tokio's blocking pool, writes in call order, database
//!   panics turned into errors.
//! - [`marker`]: the store directory's marker file (backend name and format version), checked
//!   before the database is opened and written last when a store is created.
//! - `crash` (feature `testing`): the SIGKILL crash-test harness each backend runs.
//! - `bench` (feature `testing`): the synced-append benchmark behind
//!   `cargo xtask bench storage`.

pub mod blocking;
pub mod marker;

#[cfg(feature = "testing")]
pub mod bench;
#[cfg(feature = "testing")]
pub mod crash;
