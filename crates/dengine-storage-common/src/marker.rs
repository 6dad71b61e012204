//! The store directory and its marker file: which backend and format version wrote it.
//!
//! Checked before the database is touched, so that pointing a backend at a store written by another backend, a
//! store written by a newer format, or an unrelated directory fails with a message that says
//! so, instead of an engine error (or, worse, a fresh empty log that forgets votes).

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use dengine_core::StorageError;

use crate::bounds::io_error;
use crate::codec::{MARKER_FILE, Marker};

/// What [`prepare`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirState {
    /// The marker is there: an existing store whose database must exist too.
    Existing,
    /// A new store: the caller creates the database, then calls [`write()`]. The marker is the
    /// commit point of creation, so a crash before it leaves only leftovers that the next
    /// `open_or_create` clears (nothing can have been acknowledged before it existed).
    New,
}

/// Checks the marker in `dir`. Without a marker, a missing directory or one holding nothing
/// but `leftovers` of an interrupted creation is a new store if `create` (the leftovers are
/// removed), [`StorageError::NotFound`] otherwise; anything else there is refused.
pub fn prepare(
    dir: &Path,
    expected: &Marker,
    create: bool,
    leftovers: &[&str],
) -> Result<DirState, StorageError> {
    if dir.exists() && !dir.is_dir() {
        return Err(StorageError::Io {
            path: dir.to_path_buf(),
            op: "opening the store directory",
            source: io::Error::other(
                "it is not a directory; point the store at a directory (or a path that does \
                 not exist yet)",
            )
            .into(),
        });
    }
    let path = dir.join(MARKER_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let found = Marker::parse(&text).map_err(|e| StorageError::CorruptMetadata {
                path: path.clone(),
                record: "marker",
                detail: e.to_string(),
            })?;
            if &found != expected {
                return Err(StorageError::FormatMismatch {
                    path,
                    found: found.to_string(),
                    expected: expected.to_string(),
                });
            }
            Ok(DirState::Existing)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let io_err = |op: &'static str| io_error(dir, op);
            let listing = match fs::read_dir(dir) {
                Ok(listing) => listing,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Err(StorageError::NotFound {
                            path: dir.to_path_buf(),
                        });
                    }
                    fs::create_dir_all(dir).map_err(io_err("creating the store directory"))?;
                    return Ok(DirState::New);
                }
                Err(source) => return Err(io_err("listing the store directory")(source)),
            };
            let tmp = tmp_name();
            let mut found = Vec::new();
            for item in listing {
                let item = item.map_err(io_err("listing the store directory"))?;
                let name = item.file_name();
                let ours = name
                    .to_str()
                    .is_some_and(|n| n == tmp || leftovers.contains(&n));
                if !ours {
                    return Err(StorageError::FormatMismatch {
                        path: dir.to_path_buf(),
                        found: format!("a directory without a dengine marker that holds {name:?}"),
                        expected: expected.to_string(),
                    });
                }
                found.push(item.path());
            }
            if !create {
                return Err(StorageError::NotFound {
                    path: dir.to_path_buf(),
                });
            }
            for leftover in found {
                let removed = if leftover.is_dir() {
                    fs::remove_dir_all(&leftover)
                } else {
                    fs::remove_file(&leftover)
                };
                removed.map_err(io_error(
                    &leftover,
                    "removing the leftover of an interrupted creation",
                ))?;
            }
            Ok(DirState::New)
        }
        Err(source) => Err(io_error(&path, "reading the marker")(source)),
    }
}

fn tmp_name() -> String {
    format!("{MARKER_FILE}.tmp")
}

/// Writes the marker atomically: temporary file, fsync, rename, fsync of the directory, so
/// that a crash leaves either no marker or a complete one.
pub fn write(dir: &Path, marker: &Marker) -> Result<(), StorageError> {
    let tmp = dir.join(tmp_name());
    let path = dir.join(MARKER_FILE);
    let mut file = fs::File::create(&tmp).map_err(io_error(&tmp, "creating"))?;
    file.write_all(marker.to_text().as_bytes())
        .map_err(io_error(&tmp, "writing"))?;
    file.sync_all().map_err(io_error(&tmp, "syncing"))?;
    fs::rename(&tmp, &path).map_err(io_error(&path, "renaming the marker to"))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, "syncing the directory"))
}
