//! Conformance cases about time and durability: reopening, the reader's view of writes,
//! call order, unsynced writes, large batches and entries, and a long randomized run against
//! the in-memory store as a model.

use dengine_core::{
    Entry, EntryId, HardState, LogReader, LogStore, Membership, MemoryStore, SnapshotMeta,
};

use super::checks::{all_entries, append, blank, check, observe, open, persist, state, write};
use super::factory::StoreFactory;
use super::support::{Rng, test_entry};

pub(super) async fn reopen_keeps_everything<F: StoreFactory>(factory: &mut F) {
    let case = "reopen_keeps_everything";
    let before = {
        let store = open(factory, case).await;
        let hs = HardState {
            term: 4,
            vote: Some(2),
            commit: 6,
        };
        persist(
            &store,
            case,
            write(
                Some(hs),
                (1..=10).map(|i| test_entry(1, i, 50)).collect(),
                true,
            ),
        )
        .await;
        append(
            &store,
            case,
            (8..=12).map(|i| test_entry(3, i, 20)).collect(),
        )
        .await;
        store.purge(4).await.unwrap();
        store
            .save_snapshot_meta(&SnapshotMeta {
                last_included: EntryId::new(1, 4),
                membership: Membership::new([1, 2, 3]),
            })
            .await
            .unwrap();
        observe(&store, case).await
    };
    check(
        case,
        "bounds before reopen",
        (before.state.first_index, before.state.last_index),
        (5, 12),
    );
    let store = open(factory, case).await;
    check(
        case,
        "everything after reopen",
        observe(&store, case).await,
        before,
    );
    // And the reopened store keeps working.
    append(&store, case, vec![test_entry(5, 13, 1)]).await;
    drop(store);
    let store = open(factory, case).await;
    check(case, "second reopen", store.reader().last_index(), 13);
    check(
        case,
        "second reopen term",
        store.reader().term(13).ok(),
        Some(5),
    );
}

pub(super) async fn reader_sees_writes<F: StoreFactory>(factory: &mut F) {
    let case = "reader_sees_writes";
    let store = open(factory, case).await;
    let early = store.reader();
    let cloned = early.clone();
    for i in 1..=20 {
        append(&store, case, vec![test_entry(1 + i / 7, i, i as usize)]).await;
        for r in [&early, &cloned] {
            check(case, "reader last_index", r.last_index(), i);
            check(case, "reader term", r.term(i).ok(), Some(1 + i / 7));
            let mut out = Vec::new();
            r.entries(i, i + 1, 0, &mut out).unwrap();
            check(
                case,
                "reader entry",
                out,
                vec![test_entry(1 + i / 7, i, i as usize)],
            );
        }
        if i % 5 == 0 {
            append(&store, case, vec![test_entry(9, i - 1, 1)]).await;
            check(case, "reader sees truncation", early.last_index(), i - 1);
            check(
                case,
                "reader sees overwrite",
                early.term(i - 1).ok(),
                Some(9),
            );
            append(&store, case, vec![test_entry(1 + i / 7, i, i as usize)]).await;
        }
    }
    store.purge(10).await.unwrap();
    check(case, "reader sees purge", early.first_index(), 11);
    // The reader outlives nothing: it is dropped before any reopen in this suite.
}

pub(super) async fn writes_apply_in_call_order<F: StoreFactory>(factory: &mut F) {
    let case = "writes_apply_in_call_order";
    let store = open(factory, case).await;
    // A pipelining runtime calls several writes before awaiting any, and may await them in
    // any order: they must still apply in call order. Awaiting the second first would fail
    // (a gap after the empty log) if it ran first.
    let req1 = write(None, (1..=3).map(|i| test_entry(1, i, 8)).collect(), true);
    let req2 = write(None, vec![test_entry(2, 2, 8)], true);
    let first = store.persist(&req1);
    let second = store.persist(&req2);
    let third = store.purge(1);
    let (a, b, c) = (second.await, first.await, third.await);
    assert!(
        a.is_ok() && b.is_ok() && c.is_ok(),
        "conformance `{case}`: {a:?} {b:?} {c:?}"
    );
    check(
        case,
        "log after pipelined writes",
        all_entries(&store, case).await,
        vec![test_entry(2, 2, 8)],
    );
    check(case, "boundary term", store.reader().term(1).ok(), Some(1));
}

pub(super) async fn unsynced_writes_become_durable_with_sync<F: StoreFactory>(factory: &mut F) {
    let case = "unsynced_writes_become_durable_with_sync";
    {
        let store = open(factory, case).await;
        append(&store, case, vec![blank(1, 1)]).await;
        // The commit-only write of the core: may be written lazily...
        persist(
            &store,
            case,
            write(
                Some(HardState {
                    term: 1,
                    vote: None,
                    commit: 1,
                }),
                vec![],
                false,
            ),
        )
        .await;
        persist(&store, case, write(None, vec![blank(1, 2)], false)).await;
        // ...but it is visible at once...
        check(case, "unsynced visible", store.reader().last_index(), 2);
        // ...and durable after sync.
        store.sync().await.unwrap();
    }
    let store = open(factory, case).await;
    let st = state(&store, case).await;
    check(case, "commit after sync + reopen", st.hard_state.commit, 1);
    check(case, "entry after sync + reopen", st.last_index, 2);
}

pub(super) async fn large_batches_page_through<F: StoreFactory>(factory: &mut F) {
    let case = "large_batches_page_through";
    let store = open(factory, case).await;
    let mut rng = Rng(7);
    let entries: Vec<Entry> = (1..=2000)
        .map(|i| test_entry(1, i, rng.below(600) as usize))
        .collect();
    append(&store, case, entries.clone()).await;
    let mut next = 1;
    let mut pages = 0;
    while next <= 2000 {
        let page = store.read_entries(next, 2001, 16 * 1024).await.unwrap();
        assert!(
            !page.is_empty(),
            "conformance `{case}`: empty page at {next}"
        );
        for e in &page {
            check(case, "paged entry", e, &entries[(e.index - 1) as usize]);
        }
        next += page.len() as u64;
        pages += 1;
    }
    assert!(
        pages > 1,
        "conformance `{case}`: the byte limit never applied"
    );
}

pub(super) async fn large_entries_survive_reopen<F: StoreFactory>(factory: &mut F) {
    let case = "large_entries_survive_reopen";
    // Big values take other paths in some engines (sled writes them to separate blob files).
    let entries: Vec<Entry> = (1..=3).map(|i| test_entry(1, i, 700 * 1024)).collect();
    {
        let store = open(factory, case).await;
        append(&store, case, entries.clone()).await;
    }
    let store = open(factory, case).await;
    check(
        case,
        "large entries after reopen",
        all_entries(&store, case).await,
        entries,
    );
}

pub(super) async fn randomized_against_the_model<F: StoreFactory>(factory: &mut F) {
    let case = "randomized_against_the_model";
    let model = MemoryStore::new();
    let mut store = Some(open(factory, case).await);
    let mut rng = Rng(0xd3);
    let mut term = 1;
    for step in 0..300 {
        let s = store.as_ref().unwrap();
        let st = state(&model, case).await;
        match rng.below(10) {
            // Append or overwrite somewhere in the stored suffix.
            0..=5 => {
                let from = st.first_index + rng.below(st.last_index + 2 - st.first_index);
                let n = 1 + rng.below(8);
                if rng.below(4) == 0 {
                    term += 1;
                }
                let entries: Vec<Entry> = (from..from + n)
                    .map(|i| test_entry(term, i, rng.below(64) as usize))
                    .collect();
                let hs = (rng.below(3) == 0).then_some(HardState {
                    term,
                    vote: Some(1 + rng.below(3)),
                    commit: st.first_index - 1,
                });
                let req = write(hs, entries, rng.below(5) != 0);
                model.persist(&req).await.unwrap();
                persist(s, case, req).await;
            }
            6 => {
                let up_to = st.first_index - 1 + rng.below(st.last_index + 4 - st.first_index);
                model.purge(up_to).await.unwrap();
                s.purge(up_to).await.unwrap();
            }
            7 => {
                let r = s.reader();
                let low = st.first_index + rng.below(st.last_index + 2 - st.first_index);
                let high = low + rng.below(st.last_index + 2 - low);
                let max = rng.below(300);
                check(
                    case,
                    &format!("step {step}: read_entries({low}, {high}, {max})"),
                    s.read_entries(low, high, max).await.ok(),
                    model.read_entries(low, high, max).await.ok(),
                );
                let index = (st.first_index - 1) + rng.below(st.last_index + 2 - st.first_index);
                check(
                    case,
                    &format!("step {step}: term({index})"),
                    r.term(index).map_err(|e| std::mem::discriminant(&e)),
                    model
                        .reader()
                        .term(index)
                        .map_err(|e| std::mem::discriminant(&e)),
                );
            }
            8 => {
                s.sync().await.unwrap();
                drop(store.take());
                store = Some(open(factory, case).await);
            }
            _ => {
                check(
                    case,
                    &format!("step {step}: whole store"),
                    observe(s, case).await,
                    observe(&model, case).await,
                );
            }
        }
    }
    let s = store.as_ref().unwrap();
    check(
        case,
        "final state",
        observe(s, case).await,
        observe(&model, case).await,
    );
}
