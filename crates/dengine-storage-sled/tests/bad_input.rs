//! Damaged and foreign input: every case must end in an error that names what and where,
//! never in a panic or in silently wrong data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use dengine_core::store::codec::MARKER_FILE;
use dengine_core::store::testing::{block_on, persist_request};
use dengine_core::{Entry, EntryPayload, LogError, LogReader, LogStore, StorageError};
use dengine_storage_sled::{DB_DIR, SledStore as Store};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// A payload that is easy to find in the database file.
fn marked(index: u64) -> Bytes {
    Bytes::from(format!("<<dengine-test-payload-{index:04}>>").repeat(6))
}

fn write_marked_log(dir: &Path, count: u64) {
    let rt = runtime();
    rt.block_on(async {
        let store = Store::open_or_create(dir).unwrap();
        let entries = (1..=count)
            .map(|i| Entry::new(1, i, EntryPayload::Normal(marked(i))))
            .collect();
        store
            .persist(&persist_request(None, entries, true))
            .await
            .unwrap();
    });
}

/// Every data file of the store: everything under sled's directory, largest first.
fn data_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&dir.join(DB_DIR), &mut files);
    files.sort_by_key(|f| std::cmp::Reverse(fs::metadata(f).unwrap().len()));
    files
}

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn a_flipped_byte_in_a_record_is_reported_with_file_and_index() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    write_marked_log(&dir, 10);
    let mut flipped = 0;
    for file in data_files(&dir) {
        let mut bytes = fs::read(&file).unwrap();
        // The payload may be stored more than once (copy-on-write pages); damage every copy.
        for at in find_all(&bytes, &marked(7)[..32]) {
            bytes[at + 10] ^= 0x20;
            flipped += 1;
        }
        fs::write(&file, &bytes).unwrap();
    }
    assert!(flipped > 0, "the payload was not found in the data files");

    let rt = runtime();
    rt.block_on(async {
        let store = match Store::open(&dir) {
            Ok(store) => store,
            // The engine's own page checksum may catch it first; that must be an error too.
            Err(e) => {
                assert!(e.to_string().contains(&*dir.to_string_lossy()), "{e}");
                return;
            }
        };
        let state = store.load_state().await.unwrap();
        if state.last_index < 7 {
            // sled 0.34 checksums its own log messages and, on recovery, treats a damaged one
            // as a torn write: it silently drops that batch and everything after it. That is
            // data loss we cannot tell from a crash before fsync (see the crate docs); what
            // remains must still be correct entries.
            let entries = store
                .read_entries(1, state.last_index + 1, u64::MAX)
                .await
                .unwrap();
            for e in entries {
                assert_eq!(e.payload, EntryPayload::Normal(marked(e.index)));
            }
            eprintln!(
                "sled dropped the damaged batch on recovery; the log now ends at {}",
                state.last_index
            );
            return;
        }
        let err = store.read_entries(1, 11, u64::MAX).await.unwrap_err();
        match &err {
            StorageError::Corrupt { path, index, .. } => {
                assert_eq!(*index, 7);
                assert!(path.starts_with(&dir), "{path:?}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("index 7") && message.contains(DB_DIR),
            "{message}"
        );
        // Entries before the damage still read, and the reader reports the same error.
        assert_eq!(store.read_entries(1, 7, u64::MAX).await.unwrap().len(), 6);
        let mut out = Vec::new();
        match store.reader().entries(7, 8, u64::MAX, &mut out) {
            Err(LogError::Storage(m)) => assert!(m.contains("index 7"), "{m}"),
            other => panic!("expected a storage error, got {other:?}"),
        }
        assert!(store.reader().term(7).is_err());
        eprintln!("reported: {message}");
    });
}

#[test]
fn a_truncated_file_fails_cleanly_or_keeps_a_clean_prefix() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    write_marked_log(&dir, 200);
    let file = &data_files(&dir)[0];
    let len = fs::metadata(file).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let rt = runtime();
    rt.block_on(async {
        match Store::open(&dir) {
            Err(e) => {
                let message = e.to_string();
                assert!(message.contains(&*dir.to_string_lossy()), "{message}");
                eprintln!("reported: {message}");
            }
            Ok(store) => {
                // If the engine recovered, whatever it returns must be correct entries.
                let state = store.load_state().await.unwrap();
                if let Ok(entries) = store
                    .read_entries(state.first_index, state.last_index + 1, u64::MAX)
                    .await
                {
                    for e in entries {
                        assert_eq!(e.payload, EntryPayload::Normal(marked(e.index)));
                    }
                }
                eprintln!("recovered a log ending at {}", state.last_index);
            }
        }
    });
}

#[test]
fn a_deleted_store_is_not_found_rather_than_recreated_empty() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    write_marked_log(&dir, 3);
    // The database alone vanishes: even open_or_create refuses to start over.
    fs::remove_dir_all(dir.join(DB_DIR)).unwrap();
    match Store::open_or_create(&dir) {
        Err(StorageError::NotFound { path }) => assert_eq!(path, dir.join(DB_DIR)),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // The whole directory vanishes.
    fs::remove_dir_all(&dir).unwrap();
    let err = Store::open(&dir).unwrap_err();
    assert!(
        matches!(&err, StorageError::NotFound { path } if *path == dir),
        "{err:?}"
    );
    assert!(err.to_string().contains(&*dir.to_string_lossy()));
}

#[test]
fn foreign_newer_and_unmarked_directories_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let cases = [
        ("dengine-store\nbackend = redb\nformat = 1\n", "redb"),
        ("dengine-store\nbackend = sled\nformat = 99\n", "99"),
    ];
    for (i, (marker, mention)) in cases.iter().enumerate() {
        let dir = root.path().join(format!("foreign-{i}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(MARKER_FILE), marker).unwrap();
        match Store::open_or_create(&dir) {
            Err(e @ StorageError::FormatMismatch { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(mention) && message.contains(MARKER_FILE),
                    "{message}"
                );
            }
            other => panic!("expected FormatMismatch, got {other:?}"),
        }
    }
    let garbage = root.path().join("garbage");
    fs::create_dir_all(&garbage).unwrap();
    fs::write(garbage.join(MARKER_FILE), "not a marker").unwrap();
    assert!(matches!(
        Store::open_or_create(&garbage),
        Err(StorageError::CorruptMetadata {
            record: "marker",
            ..
        })
    ));
    let unrelated = root.path().join("unrelated");
    fs::create_dir_all(&unrelated).unwrap();
    fs::write(unrelated.join("notes.txt"), "hello").unwrap();
    assert!(matches!(
        Store::open_or_create(&unrelated),
        Err(StorageError::FormatMismatch { .. })
    ));
}

#[test]
fn unreadable_directory_is_an_io_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    write_marked_log(&dir, 1);
    // Permission bits do not bind root (CAP_DAC_OVERRIDE), and the tests often run as root.
    let probe = root.path().join("probe");
    fs::write(&probe, "").unwrap();
    if fs::metadata(&probe).unwrap().uid() == 0 {
        eprintln!(
            "running as root: permission checks do not apply, so the unreadable-directory \
             case cannot be exercised here (it is not pretended to pass)"
        );
        return;
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o000)).unwrap();
    let result = Store::open(&dir);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&*dir.to_string_lossy()), "{err}");
}

#[test]
fn futures_polled_outside_tokio_fail_instead_of_panicking() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(root.path().join("store")).unwrap();
    let err = block_on(store.load_state()).unwrap_err();
    assert!(err.to_string().contains("tokio"), "{err}");
}

#[test]
fn an_interrupted_creation_is_finished_by_open_or_create_only() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    // A crash after the database was created but before the marker (the commit point of
    // creation) was renamed into place: nothing can have been acknowledged yet.
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(dir.join(DB_DIR).join("blobs")).unwrap();
    fs::write(dir.join(format!("{MARKER_FILE}.tmp")), "dengine-store\n").unwrap();
    assert!(matches!(
        Store::open(&dir),
        Err(StorageError::NotFound { .. })
    ));
    let rt = runtime();
    rt.block_on(async {
        let store = Store::open_or_create(&dir).unwrap();
        assert_eq!(store.load_state().await.unwrap().last_index, 0);
        store
            .persist(&persist_request(
                None,
                vec![Entry::new(1, 1, EntryPayload::Blank)],
                true,
            ))
            .await
            .unwrap();
    });
    assert!(dir.join(MARKER_FILE).exists());
    assert!(!dir.join(format!("{MARKER_FILE}.tmp")).exists());
    let reopened = Store::open(&dir).unwrap();
    assert_eq!(reopened.reader().last_index(), 1);
}
