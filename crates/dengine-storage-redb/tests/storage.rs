//! The storage suites every backend runs unchanged (`dengine_storage_common::testing`):
//! conformance, damaged input, and SIGKILL crashes, in one test (which is also the writer
//! that the SIGKILL test re-executes and kills). Only the steps that depend on redb's
//! files are here.
#![allow(clippy::unwrap_used, missing_docs)]

use std::fs;
use std::path::{Path, PathBuf};

use dengine_storage_common::testing::{self, Damage};
use dengine_storage_redb::{DB_FILE, RedbLog};

struct RedbFiles;

impl Damage for RedbFiles {
    type Log = RedbLog;

    fn data_files(dir: &Path) -> Vec<PathBuf> {
        vec![dir.join(DB_FILE)]
    }

    fn delete_database(dir: &Path) -> PathBuf {
        fs::remove_file(dir.join(DB_FILE)).unwrap();
        dir.join(DB_FILE)
    }

    fn half_create(dir: &Path) {
        fs::write(dir.join(DB_FILE), b"half-created").unwrap();
    }
}

#[test]
fn storage_suites() {
    testing::run_suites::<RedbFiles>();
}
