//! [`FileRegion`]: a [`SnapshotSource`] over part of an open file, for snapshot data that
//! lies on disk (the runtime's snapshot files, the transport's spool files), and [`crc32_of`],
//! its checksum read a piece at a time.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dengine_core::store::{SnapshotData, SnapshotSource};

/// `len` bytes of an open file from `offset` on. It holds the file open, so the bytes stay
/// readable after the file is renamed or removed (a snapshot file replaced by a newer one
/// while a follower still receives it; a spool file removed as soon as it is handed over).
#[derive(Debug)]
pub struct FileRegion {
    file: File,
    path: PathBuf,
    offset: u64,
    len: u64,
}

impl FileRegion {
    /// The region of `file` (opened from `path`, which is kept for messages) from `offset`
    /// on, `len` bytes long. Refused when the file is shorter than that.
    pub fn new(file: File, path: &Path, offset: u64, len: u64) -> io::Result<Self> {
        let file_len = file.metadata()?.len();
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} is {file_len} bytes; expected {len} bytes from offset {offset}",
                    path.display()
                ),
            ));
        }
        Ok(FileRegion {
            file,
            path: path.to_path_buf(),
            offset,
            len,
        })
    }

    /// Opens `path` read-only and takes its region from `offset` on, `len` bytes long.
    pub fn open(path: &Path, offset: u64, len: u64) -> io::Result<Self> {
        FileRegion::new(File::open(path)?, path, offset, len)
    }

    /// The region as snapshot data.
    pub fn into_data(self) -> SnapshotData {
        SnapshotData::Source(Arc::new(self))
    }
}

impl SnapshotSource for FileRegion {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let room = usize::try_from(self.len - offset).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        self.file
            .read_at(&mut buf[..want], self.offset + offset)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", self.path.display())))
    }
}

/// The CRC-32 (IEEE, as `crc32fast::hash`) of all of `data`, read `piece` bytes at a time so
/// that a snapshot in a file is never held whole in memory. Blocking I/O for a source.
pub fn crc32_of(data: &SnapshotData, piece: usize) -> io::Result<u32> {
    let mut crc = crc32fast::Hasher::new();
    let mut offset = 0;
    while offset < data.len() {
        let bytes = data.read_chunk(offset, piece.max(1))?;
        crc.update(&bytes);
        offset += bytes.len() as u64;
    }
    Ok(crc.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn a_region_reads_its_part_of_the_file_even_after_the_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"headerPAYLOAD").unwrap();
        let data = FileRegion::open(&path, 6, 7).unwrap().into_data();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(data.len(), 7);
        assert_eq!(data.to_bytes().unwrap(), &b"PAYLOAD"[..]);
        assert_eq!(data.read_chunk(5, 100).unwrap(), &b"AD"[..]);
        let mut s = String::new();
        data.reader().read_to_string(&mut s).unwrap();
        assert_eq!(s, "PAYLOAD");
        assert_eq!(crc32_of(&data, 3).unwrap(), crc32fast::hash(b"PAYLOAD"));
    }

    #[test]
    fn a_region_past_the_end_of_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"short").unwrap();
        let err = FileRegion::open(&path, 2, 10).unwrap_err();
        assert!(err.to_string().contains("is 5 bytes"), "{err}");
        assert!(FileRegion::open(&path, u64::MAX, 2).is_err());
    }
}
