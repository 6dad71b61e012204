//! The helpers the conformance cases share: opening, writing and observing a store, each
//! failing with the case's name and what differed.

use std::fmt::Debug;

use dengine_core::{
    Entry, EntryPayload, HardState, LogIndex, LogReader, LogStore, PersistRequest, StorageError,
    StoredState, Term,
};

use super::factory::StoreFactory;

pub(super) async fn open<F: StoreFactory>(factory: &mut F, name: &str) -> F::Store {
    match factory.open(name).await {
        Ok(store) => store,
        Err(e) => panic!("conformance `{name}`: opening the store failed: {e}"),
    }
}

pub(super) async fn persist<S: LogStore>(store: &S, case: &str, req: PersistRequest) {
    if let Err(e) = store.persist(&req).await {
        panic!("conformance `{case}`: persist failed: {e}");
    }
}

pub(super) async fn append<S: LogStore>(store: &S, case: &str, entries: Vec<Entry>) {
    persist(store, case, write(None, entries, true)).await;
}

pub(super) fn blank(term: Term, index: LogIndex) -> Entry {
    Entry::new(term, index, EntryPayload::Blank)
}

pub(super) fn check<T: PartialEq + Debug>(case: &str, what: &str, actual: T, expected: T) {
    assert_eq!(actual, expected, "conformance `{case}`: {what}");
}

pub(super) fn expect_err<T: Debug>(
    case: &str,
    what: &str,
    result: Result<T, StorageError>,
    ok: impl Fn(&StorageError) -> bool,
) {
    match result {
        Err(e) if ok(&e) => {}
        other => panic!("conformance `{case}`: {what}: unexpected result {other:?}"),
    }
}

pub(super) async fn state<S: LogStore>(store: &S, case: &str) -> StoredState {
    store
        .load_state()
        .await
        .unwrap_or_else(|e| panic!("conformance `{case}`: load_state failed: {e}"))
}

pub(super) async fn all_entries<S: LogStore>(store: &S, case: &str) -> Vec<Entry> {
    let st = state(store, case).await;
    store
        .read_entries(st.first_index, st.last_index + 1, u64::MAX)
        .await
        .unwrap_or_else(|e| panic!("conformance `{case}`: reading the whole log failed: {e}"))
}

/// Everything observable about a store, through both the async API and the reader.
#[derive(Debug, PartialEq)]
pub(super) struct Observed {
    pub(super) state: StoredState,
    boundary_term: Option<Term>,
    entries: Vec<Entry>,
    reader_first: LogIndex,
    reader_last: LogIndex,
    reader_entries: Vec<Entry>,
}

pub(super) async fn observe<S: LogStore>(store: &S, case: &str) -> Observed {
    let state = state(store, case).await;
    let reader = store.reader();
    let entries = all_entries(store, case).await;
    let mut reader_entries = Vec::new();
    reader
        .entries(
            state.first_index,
            state.last_index + 1,
            u64::MAX,
            &mut reader_entries,
        )
        .unwrap_or_else(|e| panic!("conformance `{case}`: reader.entries failed: {e}"));
    Observed {
        boundary_term: reader.term(state.first_index - 1).ok(),
        state,
        entries,
        reader_first: reader.first_index(),
        reader_last: reader.last_index(),
        reader_entries,
    }
}

/// A write for the cases (no `Raft` handed it out).
pub(super) fn write(hs: Option<HardState>, entries: Vec<Entry>, must_sync: bool) -> PersistRequest {
    PersistRequest::new(hs, entries, must_sync)
}
