//! Damage only the WAL can be asked about (the cases every backend shares are in
//! `dengine_storage_common::testing::run_bad_input`, run from `storage.rs`): every case must
//! end in an error at open that names the file, the byte offset where it applies, and what to
//! do — never in a panic or in silently wrong or missing data. The one repair the WAL makes on
//! its own, cutting a torn tail, is shown too, with the note it leaves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::fs;
use std::path::{Path, PathBuf};

use dengine_core::{Entry, EntryPayload, LogReader, LogStore, PersistRequest, StorageError};
use dengine_storage_common::testing::{marked, runtime, write_marked};
use dengine_storage_wal::{META_FILE, WalOptions, WalStore as Store, segment_file_name};

/// Small segments, so that a few hundred entries span several of them.
fn options() -> WalOptions {
    WalOptions::default().segment_bytes(64 * 1024)
}

/// Writes entries `1..=count`, `per_batch` per `persist`.
fn write_marked_log(dir: &Path, count: u64, per_batch: u64) {
    let store = Store::open_or_create_with(dir, options()).unwrap();
    runtime().block_on(write_marked(&store, count, per_batch));
}

fn open(dir: &Path) -> Result<Store, StorageError> {
    Store::open_with(dir, options())
}

fn last_index(dir: &Path) -> u64 {
    open(dir).unwrap().reader().last_index()
}

/// Where entry `index`'s payload is: (segment file, byte offset).
fn find(dir: &Path, index: u64) -> (PathBuf, usize) {
    let needle = &marked(index)[..];
    for seq in 1..100 {
        let path = dir.join(segment_file_name(seq));
        let Ok(bytes) = fs::read(&path) else { break };
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            return (path, at);
        }
    }
    panic!("entry {index} not found in the segments");
}

fn flip(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x20;
    fs::write(path, bytes).unwrap();
}

/// The store refuses to open with a `CorruptMetadata` error about `file`; returns the message.
fn refused(dir: &Path, file: &Path) -> String {
    match open(dir) {
        Err(e @ StorageError::CorruptMetadata { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(&*file.to_string_lossy()),
                "the error does not name {file:?}: {message}"
            );
            eprintln!("refused: {message}");
            message
        }
        Err(other) => panic!("expected CorruptMetadata about {file:?}, got {other:?}"),
        Ok(_) => panic!("the damaged store ({file:?}) was opened"),
    }
}

fn fresh(name: &str) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(name);
    (root, dir)
}

#[test]
fn a_flipped_byte_in_an_entry_is_refused_with_file_and_offset() {
    // (entries, per batch, which entry to damage): in the middle of the log, in the very
    // last entry (the END frame after it proves it was written whole), inside one batch.
    for (count, per_batch, damaged) in [(10, 1, 7), (10, 1, 10), (10, 10, 4), (400, 7, 3)] {
        let (_root, dir) = fresh("store");
        write_marked_log(&dir, count, per_batch);
        assert_eq!(last_index(&dir), count);
        let (file, at) = find(&dir, damaged);
        flip(&file, at + 5);
        let message = refused(&dir, &file);
        assert!(message.contains("byte offset"), "{message}");
        assert!(message.contains("wipe"), "says what to do: {message}");
    }
}

#[test]
fn a_flipped_byte_in_a_record_header_is_refused() {
    // An entry body starts with term, index and payload kind (17 bytes) after a 24-byte
    // header: crc (0..4), len (4..8), segment life (8..16), kind (16), flags (17).
    for field in [0, 5, 9, 16, 17] {
        let (_root, dir) = fresh("store");
        write_marked_log(&dir, 10, 1);
        let (file, at) = find(&dir, 6);
        flip(&file, at - 17 - 24 + field);
        let message = refused(&dir, &file);
        assert!(message.contains("byte offset"), "{message}");
    }
}

#[test]
fn truncated_segments_are_refused() {
    // The last segment cut in half, cut to almost nothing, and an earlier segment cut short.
    for (which, keep) in [
        (Which::Last, Keep::Half),
        (Which::Last, Keep::Bytes(100)),
        (Which::First, Keep::Half),
    ] {
        let (_root, dir) = fresh("store");
        write_marked_log(&dir, 600, 5);
        let segments = segment_files(&dir);
        assert!(segments.len() >= 2, "{segments:?}");
        let file = match which {
            Which::First => segments[0].clone(),
            Which::Last => segments[segments.len() - 1].clone(),
        };
        let len = fs::metadata(&file).unwrap().len();
        let keep = match keep {
            Keep::Half => len / 2 - 3,
            Keep::Bytes(n) => n,
        };
        fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(keep)
            .unwrap();
        let message = refused(&dir, &file);
        assert!(message.contains("truncated"), "{message}");
    }
}

enum Which {
    First,
    Last,
}

enum Keep {
    Half,
    Bytes(u64),
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_deleted_segment_or_metadata_file_is_refused() {
    for victim in ["first", "middle", "last", "meta"] {
        let (_root, dir) = fresh("store");
        write_marked_log(&dir, 900, 5);
        let segments = segment_files(&dir);
        assert!(segments.len() >= 3, "{segments:?}");
        let file = match victim {
            "first" => segments[0].clone(),
            "middle" => segments[1].clone(),
            "last" => segments[segments.len() - 1].clone(),
            _ => dir.join(META_FILE),
        };
        fs::remove_file(&file).unwrap();
        let message = refused(&dir, &file);
        assert!(message.contains("missing"), "{message}");
    }
    // The whole directory gone: not found, and never recreated empty by `open`.
    let (_root, dir) = fresh("store");
    write_marked_log(&dir, 3, 1);
    fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(open(&dir), Err(StorageError::NotFound { .. })));
}

#[test]
fn damaged_metadata_falls_back_to_the_other_slot_or_is_refused() {
    let (_root, dir) = fresh("store");
    write_marked_log(&dir, 900, 5);
    runtime().block_on(async {
        // A purge writes the metadata again (generation 3 or more: both slots are in use).
        let store = open(&dir).unwrap();
        store.purge(10).await.unwrap();
    });
    let meta = dir.join(META_FILE);
    let slot = 32 * 1024;
    // One slot damaged: the other one (one write older) is used. A torn metadata write looks
    // exactly like this, which is why the slots are two.
    flip(&meta, 40);
    assert_eq!(last_index(&dir), 900);
    // Both damaged: refused.
    flip(&meta, slot + 40);
    let message = refused(&dir, &meta);
    assert!(message.contains("neither slot"), "{message}");
}

#[test]
fn strangers_in_the_directory_are_refused_by_name() {
    let (_root, dir) = fresh("store");
    write_marked_log(&dir, 5, 1);
    let notes = dir.join("notes.txt");
    fs::write(&notes, "hello").unwrap();
    let message = refused(&dir, &notes);
    assert!(message.contains("move it out"), "{message}");
    fs::remove_file(&notes).unwrap();
    // A directory where the WAL keeps a file.
    let subdir = dir.join(segment_file_name(7));
    fs::create_dir(&subdir).unwrap();
    refused(&dir, &subdir);
    fs::remove_dir(&subdir).unwrap();
    assert_eq!(last_index(&dir), 5);
}

#[test]
fn a_torn_last_batch_is_cut_off_and_reported() {
    // What a power loss in the middle of the last write leaves: the batch's first record
    // complete, the rest (and the END frame) never written. Nothing of it was acknowledged.
    let (_root, dir) = fresh("store");
    write_marked_log(&dir, 6, 3);
    let (file, at) = find(&dir, 5);
    let mut bytes = fs::read(&file).unwrap();
    bytes[at + 10..at + 4096].fill(0);
    fs::write(&file, bytes).unwrap();
    let store = open(&dir).unwrap();
    assert_eq!(
        store.reader().last_index(),
        3,
        "the incomplete batch 4..=6 is cut"
    );
    let notes = store.backend().recovery_notes().join("\n");
    assert!(
        notes.contains("torn tail") && notes.contains(&*file.to_string_lossy()),
        "{notes}"
    );
    eprintln!("notes: {notes}");
    // The store goes on from there, and a reopen agrees.
    runtime().block_on(async {
        store
            .persist(&PersistRequest::new(
                None,
                vec![Entry::new(2, 4, EntryPayload::Normal(marked(44)))],
                true,
            ))
            .await
            .unwrap();
    });
    drop(store);
    let store = open(&dir).unwrap();
    assert_eq!(store.reader().last_index(), 4);
    assert!(
        store.backend().recovery_notes().is_empty(),
        "{:?}",
        store.backend().recovery_notes()
    );
}
