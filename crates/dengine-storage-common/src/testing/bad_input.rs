//! The damaged- and foreign-input suite every backend runs: each case must end in an error
//! that names what and where, never in a panic or in silently wrong data. A backend supplies
//! the few steps that depend on its files ([`Damage`]) and calls [`run_bad_input`] from one
//! test; what only one backend can be asked (the WAL's segment headers, say) stays in its own
//! tests.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use dengine_core::{Entry, EntryPayload, LogReader, LogStore, PersistRequest, StorageError};

use super::support::{block_on, runtime};
use crate::codec::MARKER_FILE;
use crate::{Store, SyncLog};

/// The backend-specific steps of the suite.
pub trait Damage {
    /// The backend under test.
    type Log: SyncLog;

    /// Options to open stores with (the default options unless overridden).
    fn options() -> <Self::Log as SyncLog>::Options {
        Default::default()
    }

    /// Every file of the store in `dir` that may hold log entries, largest first.
    fn data_files(dir: &Path) -> Vec<PathBuf>;

    /// Deletes the database of the store in `dir` but not its marker, and returns the path
    /// that the refusal to open must name.
    fn delete_database(dir: &Path) -> PathBuf;

    /// Leaves in the new directory `dir` what a crash after the database was created, but
    /// before the marker was renamed into place, leaves (besides the marker's temporary file,
    /// which the suite writes).
    fn half_create(dir: &Path);

    /// Whether the engine may, on recovery, silently drop a damaged batch and everything after
    /// it instead of reporting the damage (sled 0.34 does, see its crate docs): what remains
    /// must then still be a clean prefix of correct entries.
    const MAY_DROP_A_DAMAGED_TAIL: bool = false;
}

/// Runs every case of the suite against the backend of `D`. Panics on the first failure.
pub fn run_bad_input<D: Damage>() {
    a_flipped_byte_in_an_entry_is_reported_with_file_and_index::<D>();
    a_truncated_file_fails_cleanly_or_keeps_a_clean_prefix::<D>();
    a_deleted_store_is_refused_rather_than_recreated_empty::<D>();
    foreign_newer_and_unmarked_directories_are_refused::<D>();
    an_unreadable_directory_is_an_io_error_naming_it::<D>();
    a_file_where_the_directory_should_be_is_an_error_naming_it::<D>();
    futures_polled_outside_tokio_fail_instead_of_panicking::<D>();
    an_interrupted_creation_is_finished_by_open_or_create_only::<D>();
}

/// Opens the existing store in `dir` with `D::options()`.
pub(super) fn open<D: Damage>(dir: &Path) -> Result<Store<D::Log>, StorageError> {
    Store::open_with(dir, D::options())
}

/// Opens or creates the store in `dir` with `D::options()`.
pub(super) fn open_or_create<D: Damage>(dir: &Path) -> Result<Store<D::Log>, StorageError> {
    Store::open_or_create_with(dir, D::options())
}

/// A payload that is easy to find in the data files: the one of entry `index` in
/// [`write_marked`].
pub fn marked(index: u64) -> Bytes {
    Bytes::from(format!("<<dengine-test-payload-{index:04}>>").repeat(6))
}

/// Appends entries `1..=count` (term 1, payload [`marked`]) to an empty `store`, `per_batch`
/// to a synced `persist`.
pub async fn write_marked<S: LogStore>(store: &S, count: u64, per_batch: u64) {
    let mut next = 1;
    while next <= count {
        let last = (next + per_batch - 1).min(count);
        let entries = (next..=last)
            .map(|i| Entry::new(1, i, EntryPayload::Normal(marked(i))))
            .collect();
        store
            .persist(&PersistRequest::new(None, entries, true))
            .await
            .unwrap();
        next = last + 1;
    }
}

fn write_marked_log<D: Damage>(dir: &Path, count: u64) {
    let store = open_or_create::<D>(dir).unwrap();
    runtime().block_on(write_marked(&store, count, count));
}

/// Whatever a store returns must be the entries written, never garbage.
async fn assert_clean_prefix<S: LogStore>(store: &S) -> u64 {
    let state = store.load_state().await.unwrap();
    if let Ok(entries) = store
        .read_entries(state.first_index, state.last_index + 1, u64::MAX)
        .await
    {
        for e in entries {
            assert_eq!(e.payload, EntryPayload::Normal(marked(e.index)));
        }
    }
    state.last_index
}

fn names(err: &StorageError, path: &Path) -> bool {
    err.to_string().contains(&*path.to_string_lossy())
}

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

fn a_flipped_byte_in_an_entry_is_reported_with_file_and_index<D: Damage>() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    write_marked_log::<D>(&dir, 10);
    let mut flipped = 0;
    for file in D::data_files(&dir) {
        let mut bytes = fs::read(&file).unwrap();
        // The payload may be stored more than once (copy-on-write pages); damage every copy.
        for at in find_all(&bytes, &marked(7)[..32]) {
            bytes[at + 10] ^= 0x20;
            flipped += 1;
        }
        fs::write(&file, &bytes).unwrap();
    }
    assert!(flipped > 0, "the payload was not found in the data files");
    runtime().block_on(async {
        let store = match open::<D>(&dir) {
            Ok(store) => store,
            // The engine's own checksum (or the WAL's scan) may catch it first: an error too.
            Err(e) => {
                assert!(names(&e, &dir), "{e}");
                eprintln!("refused at open: {e}");
                return;
            }
        };
        if D::MAY_DROP_A_DAMAGED_TAIL && store.reader().last_index() < 7 {
            let last = assert_clean_prefix(&store).await;
            eprintln!("the damaged batch was dropped on recovery; the log now ends at {last}");
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
            message.contains("index 7") && names(&err, store.path()),
            "{message}"
        );
        // Entries before the damage still read, and the reader reports the same error.
        assert_eq!(store.read_entries(1, 7, u64::MAX).await.unwrap().len(), 6);
        let mut out = Vec::new();
        match store.reader().entries(7, 8, u64::MAX, &mut out) {
            Err(e @ StorageError::Corrupt { index: 7, .. }) => assert!(!e.is_out_of_range()),
            other => panic!("expected a corrupt entry 7 from the reader, got {other:?}"),
        }
        assert!(store.reader().term(7).is_err());
        eprintln!("reported: {message}");
    });
}

fn a_truncated_file_fails_cleanly_or_keeps_a_clean_prefix<D: Damage>() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    write_marked_log::<D>(&dir, 200);
    let file = &D::data_files(&dir)[0];
    let len = fs::metadata(file).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    runtime().block_on(async {
        match open::<D>(&dir) {
            Err(e) => {
                assert!(names(&e, &dir), "{e}");
                eprintln!("reported: {e}");
            }
            Ok(store) => {
                // If the engine recovered, whatever it returns must be correct entries.
                let last = assert_clean_prefix(&store).await;
                eprintln!("recovered a log ending at {last}");
            }
        }
    });
}

fn a_deleted_store_is_refused_rather_than_recreated_empty<D: Damage>() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    write_marked_log::<D>(&dir, 3);
    // The database alone vanishes: even open_or_create refuses to start over.
    let named = D::delete_database(&dir);
    match open_or_create::<D>(&dir) {
        Err(e) => assert!(names(&e, &named), "{e}"),
        Ok(_) => panic!("a store whose database was deleted was opened"),
    }
    // The whole directory vanishes.
    fs::remove_dir_all(&dir).unwrap();
    let err = open::<D>(&dir).unwrap_err();
    assert!(
        matches!(&err, StorageError::NotFound { path } if *path == dir),
        "{err:?}"
    );
    assert!(names(&err, &dir), "{err}");
}

fn foreign_newer_and_unmarked_directories_are_refused<D: Damage>() {
    let root = tempfile::tempdir().unwrap();
    let backend = <D::Log as SyncLog>::KIND.name;
    let cases = [
        ("other".to_string(), 1, "other"),
        (backend.to_string(), 99, "99"),
    ];
    for (i, (name, format, mention)) in cases.iter().enumerate() {
        let dir = root.path().join(format!("foreign-{i}"));
        fs::create_dir_all(&dir).unwrap();
        let marker = format!("dengine-store\nbackend = {name}\nformat = {format}\n");
        fs::write(dir.join(MARKER_FILE), marker).unwrap();
        match open_or_create::<D>(&dir) {
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
        open_or_create::<D>(&garbage),
        Err(StorageError::CorruptMetadata {
            record: "marker",
            ..
        })
    ));
    let unrelated = root.path().join("unrelated");
    fs::create_dir_all(&unrelated).unwrap();
    fs::write(unrelated.join("notes.txt"), "hello").unwrap();
    assert!(matches!(
        open_or_create::<D>(&unrelated),
        Err(StorageError::FormatMismatch { .. })
    ));
}

fn an_unreadable_directory_is_an_io_error_naming_it<D: Damage>() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    write_marked_log::<D>(&dir, 1);
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
    let result = open::<D>(&dir);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
    assert!(names(&err, &dir), "{err}");
}

fn a_file_where_the_directory_should_be_is_an_error_naming_it<D: Damage>() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("store");
    fs::write(&path, "not a directory").unwrap();
    for result in [open_or_create::<D>(&path), open::<D>(&path)] {
        let err = result.unwrap_err();
        assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
        assert!(
            names(&err, &path) && err.to_string().contains("not a directory"),
            "{err}"
        );
    }
}

fn futures_polled_outside_tokio_fail_instead_of_panicking<D: Damage>() {
    let root = tempfile::tempdir().unwrap();
    let store = open_or_create::<D>(&root.path().join("store")).unwrap();
    let err = block_on(store.load_state()).unwrap_err();
    assert!(err.to_string().contains("tokio"), "{err}");
}

fn an_interrupted_creation_is_finished_by_open_or_create_only<D: Damage>() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    fs::create_dir_all(&dir).unwrap();
    D::half_create(&dir);
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    fs::write(&tmp, "dengine-store\n").unwrap();
    assert!(matches!(
        open::<D>(&dir),
        Err(StorageError::NotFound { .. })
    ));
    runtime().block_on(async {
        let store = open_or_create::<D>(&dir).unwrap();
        assert_eq!(store.load_state().await.unwrap().last_index, 0);
        let first = vec![Entry::new(1, 1, EntryPayload::Blank)];
        store
            .persist(&PersistRequest::new(None, first, true))
            .await
            .unwrap();
    });
    assert!(dir.join(MARKER_FILE).exists());
    assert!(!tmp.exists());
    let reopened = open::<D>(&dir).unwrap();
    assert_eq!(reopened.reader().last_index(), 1);
}
