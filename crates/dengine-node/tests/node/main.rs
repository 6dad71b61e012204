#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Integration tests of the runtime: in-process clusters on a `LocalNetwork`.

mod basics;
mod common;
mod faults;
mod lifecycle;
mod membership;
mod metrics;
mod pipelining;
mod redb;
mod sessions;
mod test_store;
mod throughput;
