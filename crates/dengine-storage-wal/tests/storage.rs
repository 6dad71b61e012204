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
