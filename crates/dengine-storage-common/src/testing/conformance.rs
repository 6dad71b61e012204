//! The [`LogStore`](dengine_core::LogStore) conformance suite, which every backend runs
//! unchanged: [`run_conformance`] with any [`StoreFactory`], or [`run_in_dirs`] for a backend
//! that opens a store in a directory.
//!
//! It checks the contract documented on `LogStore`: append, read, truncation by overwrite,
//! purge, hard state, snapshot meta and snapshot installation, boundary indexes (0,
//! `first_index - 1`, `last_index + 1`), empty ranges, byte limits, refusal of invalid requests
//! without side effects, visibility through the reader, call order, and durability across close
//! and reopen — finally a long randomized sequence compared step by step with `MemoryStore` as
//! a model. A failed check panics with the case's name and what differed.

use super::cases_durability as durability;
use super::cases_log as log;
use super::factory::{DirFactory, Opener, StoreFactory};
use super::support::runtime;

/// Runs every conformance case against stores made by `factory`. Panics on the first failure.
pub async fn run_conformance<F: StoreFactory>(factory: &mut F) {
    log::empty_store(factory).await;
    log::append_and_read(factory).await;
    log::hard_state_alone(factory).await;
    log::overwrite_truncates_the_suffix(factory).await;
    log::invalid_requests_change_nothing(factory).await;
    log::byte_limits(factory).await;
    log::purge_keeps_the_boundary_term(factory).await;
    log::snapshot_meta(factory).await;
    durability::reopen_keeps_everything(factory).await;
    durability::reader_sees_writes(factory).await;
    durability::writes_apply_in_call_order(factory).await;
    durability::unsynced_writes_become_durable_with_sync(factory).await;
    durability::large_batches_page_through(factory).await;
    durability::large_entries_survive_reopen(factory).await;
    durability::randomized_against_the_model(factory).await;
}

/// The conformance suite for a backend that opens (or creates) a store in a directory, on a
/// tokio runtime, with stores under a temporary directory: a backend's whole conformance test
/// is `run_in_dirs(|dir| MyStore::open_or_create(dir))`.
pub fn run_in_dirs<S: dengine_core::LogStore>(open_or_create: Opener<S>) {
    let mut factory = DirFactory::new(open_or_create);
    runtime().block_on(run_conformance(&mut factory));
}
