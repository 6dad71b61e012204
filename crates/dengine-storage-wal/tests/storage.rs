//! The storage suites every backend runs unchanged (`dengine_storage_common::testing`):
//! conformance (with 64 KiB segments, and again with tiny segments and cache so that segment
//! rolls, purges of whole segments, spare reuse and reads from the files are exercised too),
//! damaged input, and SIGKILL crashes. Only the steps that depend on the WAL's files are here; the
//! WAL's own damage cases are in `bad_input.rs`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::fs;
use std::path::{Path, PathBuf};

use dengine_storage_common::testing::{self, Damage};
use dengine_storage_wal::{META_FILE, WalLog, WalOptions, WalStore, segment_file_name};

struct WalFiles;

impl Damage for WalFiles {
    type Log = WalLog;

    /// Small segments, so that the suite's stores stay small.
    fn options() -> WalOptions {
        WalOptions::default().segment_bytes(64 * 1024)
    }

    fn data_files(dir: &Path) -> Vec<PathBuf> {
        (1..)
            .map(|seq| dir.join(segment_file_name(seq)))
            .take_while(|path| path.exists())
            .collect()
    }

    fn delete_database(dir: &Path) -> PathBuf {
        fs::remove_file(dir.join(META_FILE)).unwrap();
        dir.join(META_FILE)
    }

    fn half_create(dir: &Path) {
        fs::write(dir.join(META_FILE), b"half-created").unwrap();
        fs::write(dir.join(segment_file_name(1)), b"half-preallocated").unwrap();
    }
}

#[test]
fn storage_suites() {
    testing::run_suites::<WalFiles>();
}

#[test]
fn conformance_with_tiny_segments_and_cache() {
    testing::run_in_dirs(|dir| {
        let options = WalOptions::default()
            .segment_bytes(4096)
            .cache_bytes(256)
            .max_spare_segments(2);
        WalStore::open_or_create_with(dir, options)
    });
}

/// The files of `dir` whose names end with `.spare`, by name.
fn spares(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".spare"))
        .collect();
    names.sort();
    names
}

/// The writes the WAL lets run on the caller's thread: only an unsynced record of the hard
/// state (a new commit index) with room for it in the active segment.
#[test]
fn only_an_unsynced_hard_state_record_that_fits_the_segment_is_written_in_place() {
    use dengine_core::{Entry, EntryPayload, HardState, PersistRequest};
    use dengine_storage_common::SyncLog;
    use dengine_storage_common::marker::DirState;
    let dir = tempfile::tempdir().unwrap();
    let log = WalLog::open(
        dir.path(),
        DirState::New,
        WalOptions::default().segment_bytes(4096),
    )
    .unwrap();
    let hard_state = |commit| HardState {
        term: 1,
        vote: Some(1),
        commit,
    };
    let commit = |c| PersistRequest::new(Some(hard_state(c)), Vec::new(), false);
    let entry = |i| Entry::new(i, 1, EntryPayload::Normal(vec![7; 300].into()));
    assert!(log.writes_in_place(&commit(0)));
    assert!(log.writes_in_place(&PersistRequest::new(None, Vec::new(), false)));
    assert!(!log.writes_in_place(&PersistRequest::new(Some(hard_state(0)), Vec::new(), true)));
    assert!(!log.writes_in_place(&PersistRequest::new(None, vec![entry(1)], false)));
    log.persist(&PersistRequest::new(
        Some(hard_state(0)),
        vec![entry(1)],
        true,
    ))
    .unwrap();
    // Fill the segment with commit records until one no longer fits: that write would roll.
    let mut index = 0;
    while log.writes_in_place(&commit(index)) {
        log.persist(&commit(index)).unwrap();
        index += 1;
        assert!(index < 200, "the segment never filled");
    }
    assert!(index > 20, "only {index} commit records fit in 4 KiB");
    assert!(!dir.path().join(segment_file_name(2)).exists());
    log.persist(&commit(index)).unwrap();
    assert!(
        dir.path().join(segment_file_name(2)).exists(),
        "the commit record rolled the log"
    );
    assert!(log.writes_in_place(&commit(index)));
}

/// A new store preallocates a spare beside its first segment, and its first roll renames
/// that spare into place (no segment's zeros written while a write waits); a store made
/// without spares has none.
#[test]
fn a_new_store_has_a_spare_that_its_first_roll_takes() {
    use dengine_core::{Entry, EntryPayload, HardState, LogStore, PersistRequest};
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions::default().segment_bytes(4096);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = WalStore::open_or_create_with(dir.path(), options.clone()).unwrap();
        assert_eq!(spares(dir.path()), ["00000000000000000000.spare"]);
        let spare = fs::metadata(dir.path().join("00000000000000000000.spare")).unwrap();
        assert_eq!(spare.len(), 4096);
        let hard_state = HardState {
            term: 1,
            vote: Some(1),
            commit: 0,
        };
        let mut index = 0;
        while !dir.path().join(segment_file_name(2)).exists() {
            index += 1;
            let entry = Entry::new(index, 1, EntryPayload::Normal(vec![7; 300].into()));
            let write = PersistRequest::new(Some(hard_state), vec![entry], true);
            store.persist(&write).await.unwrap();
            assert!(index < 100, "no roll after {index} entries of 300 bytes");
        }
        assert!(spares(dir.path()).is_empty(), "{:?}", spares(dir.path()));
        let segment = fs::metadata(dir.path().join(segment_file_name(2))).unwrap();
        assert_eq!(segment.len(), 4096);
    });

    let none = tempfile::tempdir().unwrap();
    let _store = WalStore::open_or_create_with(none.path(), options.max_spare_segments(0)).unwrap();
    assert!(spares(none.path()).is_empty());
}
