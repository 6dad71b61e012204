//! The few file-system operations the WAL uses, behind a trait: the real implementation
//! ([`StdFs`]) and, in tests, a model of the page cache that loses unsynced writes on
//! "power loss" (`sim.rs`). Keeping the list short is what makes the model credible: every
//! durability decision of the WAL goes through one of these calls.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// One directory entry.
#[derive(Clone, Debug)]
pub(crate) struct DirItem {
    pub(crate) name: OsString,
    pub(crate) is_dir: bool,
}

/// A file system: opening files and changing directory entries.
pub(crate) trait Vfs: Send + Sync + 'static {
    /// An open file.
    type File: VFile;

    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Creates a file (empty, replacing any file of that name) for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Lists a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<DirItem>>;
    /// Renames a file (atomically replacing `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file: positional reads and writes, `fdatasync`, size.
pub(crate) trait VFile: Send + Sync + 'static {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: the file's data (and the size needed to read it) is durable on return.
    fn sync_data(&self) -> io::Result<()>;
    /// The file's size.
    fn len(&self) -> io::Result<u64>;
    /// Sets the file's size (new space reads as zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StdFs;

impl Vfs for StdFs {
    type File = File;

    fn open(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(path)
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<DirItem>> {
        let mut out = Vec::new();
        for item in fs::read_dir(dir)? {
            let item = item?;
            out.push(DirItem {
                name: item.file_name(),
                is_dir: item.file_type()?.is_dir(),
            });
        }
        Ok(out)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl VFile for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}
