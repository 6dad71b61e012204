//! Conformance cases about the log's shape: an empty store, append and read, the hard
//! state, overwrites, refused requests, byte limits, purges and snapshots.

use dengine_core::{
    Entry, EntryId, EntryPayload, HardState, LogReader, LogStore, Membership, SnapshotMeta,
    StorageError, StoredState,
};

use super::checks::{
    all_entries, append, blank, check, expect_err, observe, open, persist, state, write,
};
use super::factory::StoreFactory;
use super::support::test_entry;

pub(super) async fn empty_store<F: StoreFactory>(factory: &mut F) {
    let case = "empty_store";
    let store = open(factory, case).await;
    let st = state(&store, case).await;
    check(
        case,
        "initial state",
        st,
        StoredState {
            hard_state: HardState::default(),
            first_index: 1,
            last_index: 0,
            snapshot_meta: None,
        },
    );
    let r = store.reader();
    check(case, "first_index", r.first_index(), 1);
    check(case, "last_index", r.last_index(), 0);
    check(case, "term(0) of the empty prefix", r.term(0).ok(), Some(0));
    assert!(
        matches!(r.term(1), Err(StorageError::Unavailable { index: 1, .. })),
        "conformance `{case}`: term(1) = {:?}",
        r.term(1)
    );
    check(
        case,
        "empty range at 1",
        store.read_entries(1, 1, u64::MAX).await.ok(),
        Some(vec![]),
    );
    expect_err(
        case,
        "range past the end",
        store.read_entries(1, 2, u64::MAX).await,
        |e| matches!(e, StorageError::Unavailable { .. }),
    );
    expect_err(
        case,
        "range from 0",
        store.read_entries(0, 1, u64::MAX).await,
        |e| matches!(e, StorageError::Compacted { .. }),
    );
    let mut out = Vec::new();
    assert!(r.entries(1, 1, 0, &mut out).is_ok() && out.is_empty());
    assert!(r.entries(1, 2, 0, &mut out).is_err());
    check(
        case,
        "sync on an empty store",
        store.sync().await.is_ok(),
        true,
    );
}

pub(super) async fn append_and_read<F: StoreFactory>(factory: &mut F) {
    let case = "append_and_read";
    let store = open(factory, case).await;
    let entries = vec![
        blank(1, 1),
        test_entry(1, 2, 10),
        Entry::new(
            1,
            3,
            EntryPayload::Membership(Membership::new([1, 2, 3]).with_learners([4])),
        ),
        test_entry(1, 4, 0),
        test_entry(2, 5, 1000),
    ];
    let hs = HardState {
        term: 2,
        vote: Some(3),
        commit: 1,
    };
    persist(&store, case, write(Some(hs), entries.clone(), true)).await;
    let st = state(&store, case).await;
    check(case, "hard state", st.hard_state, hs);
    check(case, "bounds", (st.first_index, st.last_index), (1, 5));
    check(
        case,
        "all entries",
        all_entries(&store, case).await,
        entries.clone(),
    );
    check(
        case,
        "middle range",
        store.read_entries(2, 4, u64::MAX).await.ok(),
        Some(entries[1..3].to_vec()),
    );
    check(
        case,
        "empty range at last + 1",
        store.read_entries(6, 6, u64::MAX).await.ok(),
        Some(vec![]),
    );
    check(
        case,
        "empty range inside",
        store.read_entries(3, 3, u64::MAX).await.ok(),
        Some(vec![]),
    );
    expect_err(
        case,
        "inverted range",
        store.read_entries(4, 2, u64::MAX).await,
        |e| matches!(e, StorageError::InvalidArgument(_)),
    );
    expect_err(
        case,
        "range past last + 1",
        store.read_entries(5, 7, u64::MAX).await,
        |e| matches!(e, StorageError::Unavailable { last_index: 5, .. }),
    );
    let r = store.reader();
    for e in &entries {
        check(case, "reader term", r.term(e.index).ok(), Some(e.term));
    }
    check(case, "reader term(0)", r.term(0).ok(), Some(0));
    assert!(matches!(r.term(6), Err(StorageError::Unavailable { .. })));
    // Appending right after the last entry extends the log.
    append(&store, case, vec![test_entry(2, 6, 3)]).await;
    check(case, "last after extend", r.last_index(), 6);
}

pub(super) async fn hard_state_alone<F: StoreFactory>(factory: &mut F) {
    let case = "hard_state_alone";
    let store = open(factory, case).await;
    for hs in [
        HardState {
            term: 1,
            vote: Some(1),
            commit: 0,
        },
        HardState {
            term: 7,
            vote: None,
            commit: 0,
        },
        HardState {
            term: u64::MAX,
            vote: Some(u64::MAX),
            commit: 3,
        },
    ] {
        persist(&store, case, write(Some(hs), vec![], true)).await;
        check(case, "hard state", state(&store, case).await.hard_state, hs);
    }
    // A request without a hard state leaves the saved one alone.
    append(&store, case, vec![blank(1, 1)]).await;
    check(
        case,
        "hard state after entries only",
        state(&store, case).await.hard_state.term,
        u64::MAX,
    );
}

pub(super) async fn overwrite_truncates_the_suffix<F: StoreFactory>(factory: &mut F) {
    let case = "overwrite_truncates_the_suffix";
    let store = open(factory, case).await;
    append(&store, case, (1..=5).map(|i| test_entry(1, i, 8)).collect()).await;
    // A new leader overwrites from index 3 with a shorter suffix: 5 must disappear.
    append(&store, case, vec![test_entry(2, 3, 9), test_entry(2, 4, 9)]).await;
    let r = store.reader();
    check(case, "last after overwrite", r.last_index(), 4);
    check(case, "overwritten term", r.term(3).ok(), Some(2));
    check(case, "kept term", r.term(2).ok(), Some(1));
    expect_err(
        case,
        "the old suffix is gone",
        store.read_entries(5, 6, u64::MAX).await,
        |e| matches!(e, StorageError::Unavailable { .. }),
    );
    check(
        case,
        "log after overwrite",
        all_entries(&store, case).await,
        vec![
            test_entry(1, 1, 8),
            test_entry(1, 2, 8),
            test_entry(2, 3, 9),
            test_entry(2, 4, 9),
        ],
    );
    // The truncation must be on disk, not only in a cache: reopen and look again.
    let before = observe(&store, case).await;
    drop(r);
    store.sync().await.unwrap();
    drop(store);
    let store = open(factory, case).await;
    check(
        case,
        "overwrite after reopen",
        observe(&store, case).await,
        before,
    );
    // Overwrite the very first entry: the whole log is replaced.
    append(&store, case, vec![test_entry(3, 1, 1)]).await;
    check(
        case,
        "log after overwriting index 1",
        all_entries(&store, case).await,
        vec![test_entry(3, 1, 1)],
    );
    // Overwrite the last entry with a longer suffix, then the same entry again (idempotent).
    let longer: Vec<Entry> = (1..=6).map(|i| test_entry(4, i, 5)).collect();
    append(&store, case, longer.clone()).await;
    append(&store, case, longer[2..4].to_vec()).await;
    check(
        case,
        "re-writing identical entries truncates after them",
        all_entries(&store, case).await,
        longer[..4].to_vec(),
    );
}

pub(super) async fn invalid_requests_change_nothing<F: StoreFactory>(factory: &mut F) {
    let case = "invalid_requests_change_nothing";
    let store = open(factory, case).await;
    let hs = HardState {
        term: 1,
        vote: Some(1),
        commit: 0,
    };
    persist(
        &store,
        case,
        write(Some(hs), (1..=3).map(|i| blank(1, i)).collect(), true),
    )
    .await;
    let before = observe(&store, case).await;
    let bad_hs = Some(HardState {
        term: 9,
        vote: None,
        commit: 0,
    });
    let bad = [
        ("gap after the last entry", vec![blank(1, 5)]),
        ("index 0", vec![blank(1, 0)]),
        ("not consecutive", vec![blank(1, 4), blank(1, 6)]),
        ("descending", vec![blank(1, 3), blank(1, 2)]),
    ];
    for (what, entries) in bad {
        expect_err(
            case,
            what,
            store.persist(&write(bad_hs, entries, true)).await,
            |e| matches!(e, StorageError::InvalidArgument(_)),
        );
    }
    check(
        case,
        "nothing changed, not even the hard state",
        observe(&store, case).await,
        before,
    );
}

pub(super) async fn byte_limits<F: StoreFactory>(factory: &mut F) {
    let case = "byte_limits";
    let store = open(factory, case).await;
    let entries: Vec<Entry> = (1..=10).map(|i| test_entry(1, i, 100)).collect();
    append(&store, case, entries.clone()).await;
    let size = entries[0].size_bytes();
    let r = store.reader();
    for (max, expected) in [
        (0, 1),
        (1, 1),
        (size, 1),
        (size + 1, 1),
        (2 * size, 2),
        (3 * size - 1, 2),
        (9 * size, 9),
        (u64::MAX, 10),
    ] {
        let got = store.read_entries(1, 11, max).await.ok();
        check(
            case,
            &format!("read_entries with max_bytes {max}"),
            got,
            Some(entries[..expected].to_vec()),
        );
        let mut out = Vec::new();
        r.entries(1, 11, max, &mut out).ok();
        check(
            case,
            &format!("reader.entries with max_bytes {max}"),
            out,
            entries[..expected].to_vec(),
        );
    }
    check(
        case,
        "limit applies from low, not from 1",
        store.read_entries(5, 11, 2 * size).await.ok(),
        Some(entries[4..6].to_vec()),
    );
}

pub(super) async fn purge_keeps_the_boundary_term<F: StoreFactory>(factory: &mut F) {
    let case = "purge_keeps_the_boundary_term";
    let store = open(factory, case).await;
    let entries: Vec<Entry> = (1..=6).map(|i| test_entry(i, i, 4)).collect();
    append(&store, case, entries.clone()).await;
    let r = store.reader();
    store.purge(3).await.unwrap();
    check(case, "first after purge", r.first_index(), 4);
    check(case, "last after purge", r.last_index(), 6);
    check(case, "term of the purged boundary", r.term(3).ok(), Some(3));
    assert!(
        matches!(r.term(2), Err(StorageError::Compacted { .. })),
        "conformance `{case}`: term(2) = {:?}",
        r.term(2)
    );
    expect_err(
        case,
        "read from the purged boundary",
        store.read_entries(3, 5, u64::MAX).await,
        |e| matches!(e, StorageError::Compacted { first_index: 4, .. }),
    );
    check(
        case,
        "remaining entries",
        all_entries(&store, case).await,
        entries[3..].to_vec(),
    );
    // Purging what is already purged is a no-op.
    store.purge(2).await.unwrap();
    store.purge(3).await.unwrap();
    check(case, "first after no-op purge", r.first_index(), 4);
    // Writing at or below the compaction point is refused.
    expect_err(
        case,
        "write at the compaction point",
        store.persist(&write(None, vec![blank(9, 3)], true)).await,
        |e| matches!(e, StorageError::InvalidArgument(_)),
    );
    // Purge everything: the log is empty, but the boundary term still answers.
    store.purge(6).await.unwrap();
    let st = state(&store, case).await;
    check(
        case,
        "bounds of an emptied log",
        (st.first_index, st.last_index),
        (7, 6),
    );
    check(
        case,
        "term of the last purged entry",
        r.term(6).ok(),
        Some(6),
    );
    check(
        case,
        "empty range at first_index",
        store.read_entries(7, 7, u64::MAX).await.ok(),
        Some(vec![]),
    );
    // And the log continues after it.
    append(&store, case, vec![test_entry(7, 7, 2)]).await;
    check(
        case,
        "append after purging everything",
        all_entries(&store, case).await,
        vec![test_entry(7, 7, 2)],
    );
    // Overwriting the first entry after a purge is allowed (it is after the boundary).
    append(&store, case, vec![test_entry(8, 7, 2)]).await;
    check(
        case,
        "overwrite first entry after purge",
        r.term(7).ok(),
        Some(8),
    );
    // A purge point past the end purges the whole log, keeping the last entry's term.
    store.purge(100).await.unwrap();
    let st = state(&store, case).await;
    check(
        case,
        "bounds after purging past the end",
        (st.first_index, st.last_index),
        (8, 7),
    );
    check(
        case,
        "term after purging past the end",
        r.term(7).ok(),
        Some(8),
    );
}

pub(super) async fn snapshot_meta<F: StoreFactory>(factory: &mut F) {
    let case = "snapshot_meta";
    let store = open(factory, case).await;
    append(&store, case, (1..=5).map(|i| test_entry(1, i, 4)).collect()).await;
    let r = store.reader();
    // A snapshot this node built of its own log: recorded, the log left alone.
    let inside = SnapshotMeta {
        last_included: EntryId::new(1, 3),
        membership: Membership::new([1, 2, 3]),
    };
    store.save_snapshot_meta(&inside).await.unwrap();
    let st = state(&store, case).await;
    check(case, "meta saved", st.snapshot_meta, Some(inside.clone()));
    check(
        case,
        "log untouched",
        (st.first_index, st.last_index),
        (1, 5),
    );
    // The usual follow-up: compact up to the snapshot; saving it again is still fine.
    store.purge(3).await.unwrap();
    check(case, "term at the snapshot", r.term(3).ok(), Some(1));
    store.save_snapshot_meta(&inside).await.unwrap();
    // A local snapshot must match the log.
    for (what, bad) in [
        ("other term", EntryId::new(2, 4)),
        ("past the end", EntryId::new(1, 9)),
        ("older than the compaction point", EntryId::new(1, 2)),
    ] {
        expect_err(
            case,
            &format!("save_snapshot_meta {what}"),
            store
                .save_snapshot_meta(&SnapshotMeta {
                    last_included: bad,
                    membership: Membership::new([1]),
                })
                .await,
            |e| matches!(e, StorageError::InvalidArgument(_)),
        );
    }
    check(
        case,
        "refused snapshots change nothing",
        state(&store, case).await.snapshot_meta,
        Some(inside),
    );
    // A leader's snapshot replaces the whole log, even where the log matches it.
    let matching = SnapshotMeta {
        last_included: EntryId::new(1, 4),
        membership: Membership::new([1, 2]).with_learners([5]),
    };
    store.reset_to_snapshot(&matching).await.unwrap();
    let st = state(&store, case).await;
    check(case, "meta replaced", st.snapshot_meta, Some(matching));
    check(case, "log reset", (st.first_index, st.last_index), (5, 4));
    check(
        case,
        "boundary term from the snapshot",
        r.term(4).ok(),
        Some(1),
    );
    // A leader's snapshot past the end of the log, with a newer term.
    let ahead = SnapshotMeta {
        last_included: EntryId::new(3, 100),
        membership: Membership::new([1]),
    };
    store.reset_to_snapshot(&ahead).await.unwrap();
    let st = state(&store, case).await;
    check(
        case,
        "log reset past the end",
        (st.first_index, st.last_index),
        (101, 100),
    );
    check(
        case,
        "boundary term past the end",
        r.term(100).ok(),
        Some(3),
    );
    append(&store, case, vec![test_entry(3, 101, 1)]).await;
    check(case, "append after snapshot", r.last_index(), 101);
    // Older than the compaction point: refused.
    expect_err(
        case,
        "reset to an older snapshot",
        store
            .reset_to_snapshot(&SnapshotMeta {
                last_included: EntryId::new(1, 50),
                membership: Membership::new([1]),
            })
            .await,
        |e| matches!(e, StorageError::InvalidArgument(_)),
    );
    check(case, "refused reset changes nothing", r.last_index(), 101);
}
