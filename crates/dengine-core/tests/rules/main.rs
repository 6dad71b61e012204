//! Rule tests for dengine-core: one or more tests per protocol rule, named after the rule and
//! citing the Raft paper (Ongaro & Ousterhout 2014) or thesis (Ongaro 2014) section.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub,
    dead_code
)]

mod cluster;
mod election;
mod hostile;
mod membership;
mod proposals;
mod reads;
mod ready_contract;
mod replication;
mod safety;
mod scenarios;
mod snapshots;
mod transfer;
