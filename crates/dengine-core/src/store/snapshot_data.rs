//! [`SnapshotData`]: a snapshot's bytes, held in memory or read from where they lie (a file),
//! so that a snapshot of a large state machine is never held whole in memory on its way from
//! the state machine to a file, over the network, and back into a state machine.
//!
//! The core defines the type and never reads it (it is sans-I/O); the runtime, the transport
//! and the state machine do, through [`SnapshotSource`] implementations of their own (the
//! runtime's snapshot files, the transport's spool files).

use std::fmt;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

/// Random-access read-only bytes of known length: where a [`SnapshotData`] that is not in
/// memory lies. Implemented over a file region by `dengine_storage_common::FileRegion`.
///
/// The bytes must not change while a handle exists: a source is read more than once (a
/// checksum pass, then the copy) and from several tasks at once.
pub trait SnapshotSource: Send + Sync + fmt::Debug + 'static {
    /// The number of bytes.
    fn len(&self) -> u64;

    /// Whether there are no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads into `buf` from `offset` (less than [`len`](Self::len)); returns how many bytes
    /// were read, 0 only at the end. Blocking I/O: call it from a blocking context.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// A snapshot's serialized state: bytes in memory, or a [`SnapshotSource`] read on demand.
/// Cloning is cheap (a reference count) either way.
#[derive(Clone)]
pub enum SnapshotData {
    /// Held in memory.
    Bytes(Bytes),
    /// Read from a source (a file) when needed.
    Source(Arc<dyn SnapshotSource>),
}

impl SnapshotData {
    /// No bytes.
    pub fn empty() -> Self {
        SnapshotData::Bytes(Bytes::new())
    }

    /// The number of bytes.
    pub fn len(&self) -> u64 {
        match self {
            SnapshotData::Bytes(b) => b.len() as u64,
            SnapshotData::Source(s) => s.len(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` bytes from `offset` (fewer only at the end; empty at or past it). Blocking
    /// I/O for a source.
    pub fn read_chunk(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        let len = self.len();
        let start = offset.min(len);
        let end = start.saturating_add(max as u64).min(len);
        match self {
            SnapshotData::Bytes(b) => Ok(b.slice(start as usize..end as usize)),
            SnapshotData::Source(s) => {
                let mut buf = vec![0u8; (end - start) as usize];
                read_exact_at(s.as_ref(), start, &mut buf)?;
                Ok(Bytes::from(buf))
            }
        }
    }

    /// Every byte in memory: a cheap clone when they are there already, else a read of the
    /// whole source (for state machines small enough to hold their snapshot). Blocking I/O for
    /// a source.
    pub fn to_bytes(&self) -> io::Result<Bytes> {
        match self {
            SnapshotData::Bytes(b) => Ok(b.clone()),
            SnapshotData::Source(s) => {
                let len = usize::try_from(s.len()).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::OutOfMemory,
                        "the snapshot is larger than this platform's address space",
                    )
                })?;
                let mut buf = vec![0u8; len];
                read_exact_at(s.as_ref(), 0, &mut buf)?;
                Ok(Bytes::from(buf))
            }
        }
    }

    /// The bytes from `offset` on (none at or past the end), sharing this data's memory or
    /// source: for a runtime that stores a header of its own before a state machine's bytes.
    pub fn slice_from(&self, offset: u64) -> SnapshotData {
        let len = self.len();
        let start = offset.min(len);
        match self {
            SnapshotData::Bytes(b) => SnapshotData::Bytes(b.slice(start as usize..)),
            SnapshotData::Source(s) => SnapshotData::Source(Arc::new(Tail {
                source: s.clone(),
                offset: start,
                len: len - start,
            })),
        }
    }

    /// A reader from the first byte on, which also seeks. Wrap it in a
    /// [`std::io::BufReader`] for small reads: each read of a source is a system call.
    pub fn reader(&self) -> SnapshotReader {
        SnapshotReader {
            data: self.clone(),
            pos: 0,
        }
    }
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotData::Bytes(b) => write!(f, "SnapshotData::Bytes({} bytes)", b.len()),
            SnapshotData::Source(s) => write!(f, "SnapshotData::Source({s:?})"),
        }
    }
}

impl Default for SnapshotData {
    fn default() -> Self {
        SnapshotData::empty()
    }
}

impl From<Bytes> for SnapshotData {
    fn from(bytes: Bytes) -> Self {
        SnapshotData::Bytes(bytes)
    }
}

impl From<Vec<u8>> for SnapshotData {
    fn from(bytes: Vec<u8>) -> Self {
        SnapshotData::Bytes(Bytes::from(bytes))
    }
}

/// Equal when the bytes are equal (a source is read to compare: meant for tests).
impl PartialEq for SnapshotData {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SnapshotData::Bytes(a), SnapshotData::Bytes(b)) => a == b,
            _ => match (self.to_bytes(), other.to_bytes()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            },
        }
    }
}

/// The bytes of a source from an offset on ([`SnapshotData::slice_from`]).
#[derive(Debug)]
struct Tail {
    source: Arc<dyn SnapshotSource>,
    offset: u64,
    len: u64,
}

impl SnapshotSource for Tail {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.len - offset).unwrap_or(usize::MAX));
        self.source.read_at(self.offset + offset, &mut buf[..want])
    }
}

fn read_exact_at(
    source: &dyn SnapshotSource,
    mut offset: u64,
    mut buf: &mut [u8],
) -> io::Result<()> {
    while !buf.is_empty() {
        match source.read_at(offset, buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the snapshot ends early, at byte {offset} of {}",
                        source.len()
                    ),
                ));
            }
            Ok(n) => {
                offset += n as u64;
                buf = &mut buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A sequential reader over a [`SnapshotData`] (see [`SnapshotData::reader`]).
#[derive(Debug)]
pub struct SnapshotReader {
    data: SnapshotData,
    pos: u64,
}

impl SnapshotReader {
    /// The offset of the next byte to read.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl io::Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = self.data.len();
        if self.pos >= len || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(len - self.pos).unwrap_or(usize::MAX));
        let n = match &self.data {
            SnapshotData::Bytes(b) => {
                let start = self.pos as usize;
                buf[..want].copy_from_slice(&b[start..start + want]);
                want
            }
            SnapshotData::Source(s) => s.read_at(self.pos, &mut buf[..want])?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for SnapshotReader {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let target = match to {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => self.data.len().checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(pos) => {
                self.pos = pos;
                Ok(pos)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the snapshot",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    /// A source over bytes that reads at most 3 bytes per call, as a file may.
    #[derive(Debug)]
    struct Dribble(Vec<u8>);

    impl SnapshotSource for Dribble {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            let start = (offset as usize).min(self.0.len());
            let n = buf.len().min(3).min(self.0.len() - start);
            buf[..n].copy_from_slice(&self.0[start..start + n]);
            Ok(n)
        }
    }

    fn both(bytes: &[u8]) -> [SnapshotData; 2] {
        [
            SnapshotData::from(bytes.to_vec()),
            SnapshotData::Source(Arc::new(Dribble(bytes.to_vec()))),
        ]
    }

    #[test]
    fn chunks_whole_reads_and_seeks_agree_for_memory_and_sources() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for data in both(&bytes) {
            assert_eq!(data.len(), 1000);
            assert_eq!(data.to_bytes().unwrap(), bytes);
            assert_eq!(data.read_chunk(990, 64).unwrap(), bytes[990..]);
            assert_eq!(data.read_chunk(10, 7).unwrap(), bytes[10..17]);
            assert!(data.read_chunk(1000, 8).unwrap().is_empty());
            assert!(data.read_chunk(5000, 8).unwrap().is_empty());
            let mut all = Vec::new();
            data.reader().read_to_end(&mut all).unwrap();
            assert_eq!(all, bytes);
            let mut r = data.reader();
            r.seek(SeekFrom::Start(500)).unwrap();
            r.seek(SeekFrom::Current(-100)).unwrap();
            let mut four = [0u8; 4];
            r.read_exact(&mut four).unwrap();
            assert_eq!(four, bytes[400..404]);
            assert_eq!(r.position(), 404);
            assert!(r.seek(SeekFrom::Current(-1000)).is_err());
        }
        let [a, b] = both(&bytes);
        assert_eq!(a, b);
    }

    #[test]
    fn a_slice_from_an_offset_reads_the_same_tail_from_memory_and_sources() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(100).collect();
        for data in both(&bytes) {
            let tail = data.slice_from(40);
            assert_eq!(tail.len(), 60);
            assert_eq!(tail.to_bytes().unwrap(), bytes[40..]);
            assert_eq!(tail.read_chunk(50, 64).unwrap(), bytes[90..]);
            let mut all = Vec::new();
            tail.reader().read_to_end(&mut all).unwrap();
            assert_eq!(all, bytes[40..]);
            assert!(data.slice_from(100).is_empty());
            assert!(data.slice_from(500).is_empty());
            assert_eq!(tail.slice_from(10).to_bytes().unwrap(), bytes[50..]);
        }
    }

    #[test]
    fn a_source_shorter_than_it_claims_is_an_error_not_zeros() {
        #[derive(Debug)]
        struct Liar;
        impl SnapshotSource for Liar {
            fn len(&self) -> u64 {
                10
            }
            fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<usize> {
                Ok(0)
            }
        }
        let data = SnapshotData::Source(Arc::new(Liar));
        let err = data.to_bytes().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(data.read_chunk(0, 4).is_err());
    }
}
