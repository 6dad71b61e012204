//! The [`LogStore`] conformance suite (feature `testing`), which every backend runs unchanged,
//! plus small helpers for storage tests.
//!
//! A backend provides a [`StoreFactory`] that opens a store by name (creating it empty the
//! first time, reopening it afterwards) and calls [`run_conformance`] from a test, driving the
//! future with its executor (or [`block_on`] if the backend needs none). A failed check panics
//! with the case's name and what differed, as test assertions do.
//!
//! The suite checks the contract documented on [`LogStore`]: append, read, truncation by
//! overwrite, purge, hard state, snapshot meta and snapshot installation, boundary indexes (0, `first_index - 1`,
//! `last_index + 1`), empty ranges, byte limits, refusal of invalid requests without side
//! effects, visibility through the reader, and durability across close and reopen — finally a
//! long randomized sequence compared step by step with [`MemoryStore`]
//! as a model.

// This module exists to fail tests: assertions and panics are its output, not a bug.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod cases;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use bytes::Bytes;

use super::{LogStore, MemoryStore, StorageError};
use crate::ready::PersistRequest;
use crate::types::{Entry, EntryPayload, HardState, LogIndex, Term};

/// Opens stores for the conformance suite.
pub trait StoreFactory {
    /// The store under test.
    type Store: LogStore;

    /// Opens the store called `name`: empty the first time a name is used, and with everything
    /// durable from earlier instances when it is opened again. The suite drops every earlier
    /// instance of the store (and its readers) before it reopens one.
    fn open(&mut self, name: &str) -> impl Future<Output = Result<Self::Store, StorageError>>;
}

/// Builds a [`PersistRequest`] outside the core, for storage tests and benchmarks. Its
/// [`done`](PersistRequest::done) acknowledgement means nothing to a `Raft`.
pub fn persist_request(
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    must_sync: bool,
) -> PersistRequest {
    let covers_entry = entries.last().map(Entry::id);
    PersistRequest {
        write_id: 0,
        hard_state,
        entries,
        must_sync,
        covers_entry,
    }
}

/// A normal entry whose payload is derived from its index and term, so that a reader can
/// check it without remembering it.
pub fn test_entry(term: Term, index: LogIndex, len: usize) -> Entry {
    let seed = index.wrapping_mul(31).wrapping_add(term);
    let data: Vec<u8> = (0..len)
        .map(|i| (seed.wrapping_add(i as u64) % 251) as u8)
        .collect();
    Entry::new(term, index, EntryPayload::Normal(Bytes::from(data)))
}

/// Runs a future to completion on the current thread. Enough for stores whose futures do not
/// need a particular executor (such as [`MemoryStore`]); a backend that uses tokio drives the
/// suite with tokio instead.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => thread::park(),
        }
    }
}

/// A [`StoreFactory`] for [`MemoryStore`]: reopening a name hands out the same store.
#[derive(Debug, Default)]
pub struct MemoryFactory {
    stores: std::collections::HashMap<String, MemoryStore>,
}

impl StoreFactory for MemoryFactory {
    type Store = MemoryStore;

    async fn open(&mut self, name: &str) -> Result<MemoryStore, StorageError> {
        Ok(self.stores.entry(name.to_string()).or_default().clone())
    }
}

/// Runs every conformance case against stores made by `factory`. Panics on the first failure.
pub async fn run_conformance<F: StoreFactory>(factory: &mut F) {
    cases::empty_store(factory).await;
    cases::append_and_read(factory).await;
    cases::hard_state_alone(factory).await;
    cases::overwrite_truncates_the_suffix(factory).await;
    cases::invalid_requests_change_nothing(factory).await;
    cases::byte_limits(factory).await;
    cases::purge_keeps_the_boundary_term(factory).await;
    cases::snapshot_meta(factory).await;
    cases::reopen_keeps_everything(factory).await;
    cases::reader_sees_writes(factory).await;
    cases::writes_apply_in_call_order(factory).await;
    cases::unsynced_writes_become_durable_with_sync(factory).await;
    cases::large_batches_page_through(factory).await;
    cases::large_entries_survive_reopen(factory).await;
    cases::randomized_against_the_model(factory).await;
}
