//! The bodies of dengine's fuzz targets: each takes arbitrary bytes and panics on a finding.
//! `fuzz/` (cargo-fuzz, nightly, run by `cargo xtask fuzz`) calls them from libFuzzer; the
//! tests of this crate run them, on stable, over every input committed under
//! `fuzz/corpus/<target>/` (seeds and the reproducers of past findings), so a fixed finding
//! stays fixed. docs/correctness.md lists the targets, what each checks and their runs.
#![allow(
    clippy::panic,
    reason = "a fuzz target reports a finding by panicking: libFuzzer saves the input"
)]

pub mod admin;
pub mod client;
mod grpc;
pub mod kv;
pub mod peer;
pub mod settings;
pub mod storage;
mod support;

/// One fuzz target.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Its name (`cargo xtask fuzz NAME`, `fuzz/fuzz_targets/NAME.rs`).
    pub name: &'static str,
    /// Runs one input; panics on a finding.
    pub run: fn(&[u8]),
    /// Inputs that reach its interesting paths (the committed seed corpus).
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "protocol",
        run: protocol,
        seeds: dengine_sim::fuzz::protocol_seeds,
    },
    Target {
        name: "peer",
        run: peer::peer,
        seeds: peer::seeds,
    },
    Target {
        name: "admin",
        run: admin::admin,
        seeds: admin::seeds,
    },
    Target {
        name: "client",
        run: client::client,
        seeds: client::seeds,
    },
    Target {
        name: "kv",
        run: kv::kv,
        seeds: kv::seeds,
    },
    Target {
        name: "wal_recovery",
        run: storage::wal_recovery,
        seeds: storage::recovery_seeds,
    },
    Target {
        name: "redb_recovery",
        run: storage::redb_recovery,
        seeds: storage::recovery_seeds,
    },
    Target {
        name: "sled_recovery",
        run: storage::sled_recovery,
        seeds: storage::recovery_seeds,
    },
    Target {
        name: "record_codec",
        run: storage::record_codec,
        seeds: storage::codec_seeds,
    },
    Target {
        name: "settings",
        run: settings::settings,
        seeds: settings::seeds,
    },
];

/// Target `protocol`: [`dengine_sim::fuzz::protocol`], a cluster of cores run by the input's
/// schedule with the simulator's safety invariants as the oracle.
pub fn protocol(data: &[u8]) {
    if let Err(e) = dengine_sim::fuzz::protocol(data) {
        panic!("{e}");
    }
}
