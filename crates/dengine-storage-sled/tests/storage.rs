//! The storage suites every backend runs unchanged (`dengine_storage_common::testing`):
//! conformance, damaged input, and SIGKILL crashes, in one test (which is also the writer
//! that the SIGKILL test re-executes and kills). Only the steps that depend on sled's
//! files are here.
#![allow(clippy::unwrap_used, missing_docs)]

use std::cmp::Reverse;
use std::fs;
use std::path::{Path, PathBuf};

use dengine_storage_common::testing::{self, Damage};
use dengine_storage_sled::{DB_DIR, SledLog};

struct SledFiles;

impl Damage for SledFiles {
    type Log = SledLog;

    /// Everything under sled's directory, largest first.
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
        files.sort_by_key(|f| Reverse(fs::metadata(f).unwrap().len()));
        files
    }

    fn delete_database(dir: &Path) -> PathBuf {
        fs::remove_dir_all(dir.join(DB_DIR)).unwrap();
        dir.join(DB_DIR)
    }

    fn half_create(dir: &Path) {
        fs::create_dir_all(dir.join(DB_DIR).join("blobs")).unwrap();
    }

    // sled 0.34 treats a damaged log message as a torn write (see the crate docs).
    const MAY_DROP_A_DAMAGED_TAIL: bool = true;
}

#[test]
fn storage_suites() {
    testing::run_suites::<SledFiles>();
}

/// sled holds its file lock while an instance is open; opening the same store again in this
/// process waits (up to 2 s) for an instance being closed instead of failing at once. (sled
/// reports the held lock as an `Other` I/O error, which the retry did not recognise until the
/// sled_recovery fuzz target showed it.)
#[test]
fn reopening_waits_for_an_instance_being_closed() {
    use dengine_storage_sled::SledStore;
    let dir = tempfile::tempdir().unwrap();
    let first = SledStore::open_or_create(dir.path()).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
    });
    let started = std::time::Instant::now();
    let second = SledStore::open(dir.path());
    closer.join().unwrap();
    assert!(
        second.is_ok(),
        "reopening failed instead of waiting: {:?}",
        second.err()
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
}
