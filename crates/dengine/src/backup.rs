//! Backup files: a state machine's snapshot and the log index it covers, checksummed. An
//! application writes one from a snapshot of its state (dengine-kv streams one to
//! `etcdctl snapshot save`); `node.restore_from` founds a new cluster from it
//! ([`NodeBuilder::bootstrap_from`](crate::NodeBuilder::bootstrap_from)).
//!
//! ```text
//! "DBACKUP1" | u64 index | u64 data_len | data | zeros to a multiple of 512 bytes |
//! u32 crc32c(everything before) | 28 zero bytes
//! ```
//!
//! Integers are little-endian. The padding and the 32-byte trailer give the file the shape
//! `etcdctl snapshot save` (3.4) checks before it keeps a file: a size of 512·n + 32 (etcd's
//! snapshots end with a 32-byte SHA-256). A file that is cut short, has bytes added, has
//! anything but zeros where zeros belong, or fails the checksum is refused with what is wrong;
//! nothing in it is used.
//!
//! ```
//! use dengine::backup;
//!
//! let file = backup::encode(42, b"state");
//! let seed = backup::decode(&file).unwrap();
//! assert_eq!((seed.index, &seed.data.to_bytes().unwrap()[..]), (42, &b"state"[..]));
//! assert!(backup::decode(&file[..file.len() - 1]).is_err());
//! ```

use std::path::{Path, PathBuf};

use bytes::Bytes;
use dengine_core::LogIndex;
use dengine_core::store::SnapshotData;
use dengine_node::Seed;
use dengine_storage_common::FileRegion;

/// The first bytes of every backup file (format version 1).
pub const MAGIC: &[u8; 8] = b"DBACKUP1";

/// Bytes before the data: magic, index, data length.
const HEADER: usize = 8 + 8 + 8;
/// Bytes after the padding: the checksum and reserved zeros.
const TRAILER: usize = 32;
/// The header, data and padding fill whole blocks of this size.
const BLOCK: usize = 512;
/// Pieces a backup is checked in.
const PIECE: usize = 1 << 20;

/// The zeros after `data_len` bytes of data.
fn padding(data_len: u64) -> u64 {
    let used = (HEADER as u64 + data_len) % BLOCK as u64;
    (BLOCK as u64 - used) % BLOCK as u64
}

/// A backup file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file could not be read.
    #[error("cannot read the backup {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not an intact backup.
    #[error("{origin} is not an intact dengine backup: {detail}")]
    Damaged {
        /// The file, or "the backup" for bytes from elsewhere.
        origin: String,
        /// What is wrong.
        detail: String,
    },
}

/// A backup of `data`, a state machine's snapshot covering the log up to `index`.
pub fn encode(index: LogIndex, data: &[u8]) -> Vec<u8> {
    let (mut encoder, mut out) = Encoder::new(index, data.len() as u64);
    out.reserve(encoder.file_len() as usize);
    encoder.data(data);
    out.extend_from_slice(data);
    // The data given is exactly what the header announces: the trailer cannot be refused.
    out.extend(encoder.finish().unwrap_or_default());
    out
}

/// Writes a backup file piece by piece, for a snapshot too large to hold in memory: the
/// header first (from [`new`](Encoder::new)), then the data as it is read (each piece passed
/// to [`data`](Encoder::data) too, for the checksum), then [`finish`](Encoder::finish)'s
/// padding and trailer. The result is byte for byte what [`encode`] makes.
#[derive(Debug)]
pub struct Encoder {
    crc: u32,
    data_len: u64,
    seen: u64,
}

impl Encoder {
    /// An encoder for `data_len` bytes of snapshot covering the log up to `index`, and the
    /// file's first bytes (its header).
    pub fn new(index: LogIndex, data_len: u64) -> (Encoder, Vec<u8>) {
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&index.to_le_bytes());
        header.extend_from_slice(&data_len.to_le_bytes());
        let encoder = Encoder {
            crc: crc32c::crc32c(&header),
            data_len,
            seen: 0,
        };
        (encoder, header)
    }

    /// The length of the whole file.
    pub fn file_len(&self) -> u64 {
        HEADER as u64 + self.data_len + padding(self.data_len) + TRAILER as u64
    }

    /// The next piece of the data, in order.
    pub fn data(&mut self, piece: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, piece);
        self.seen += piece.len() as u64;
    }

    /// The file's last bytes: padding, checksum, reserved zeros. Refused (with what went
    /// wrong) when the data passed is not as long as the header announced.
    pub fn finish(self) -> Result<Vec<u8>, BackupError> {
        if self.seen != self.data_len {
            return Err(BackupError::Damaged {
                origin: "the backup being written".into(),
                detail: format!(
                    "{} bytes of data were announced but {} were written",
                    self.data_len, self.seen
                ),
            });
        }
        let mut tail = vec![0u8; padding(self.data_len) as usize];
        let crc = crc32c::crc32c_append(self.crc, &tail);
        tail.extend_from_slice(&crc.to_le_bytes());
        tail.resize(tail.len() + TRAILER - 4, 0);
        Ok(tail)
    }
}

/// Reads a backup made by [`encode`], checking every byte.
pub fn decode(bytes: &[u8]) -> Result<Seed, BackupError> {
    let all = Bytes::copy_from_slice(bytes);
    let (index, len) = check(&SnapshotData::from(all.clone()), "the backup", None)?;
    Ok(Seed {
        index,
        data: all.slice(HEADER..HEADER + len as usize).into(),
    })
}

/// Reads and checks the backup file at `path`, a piece at a time: the seed's data is read
/// from the file when it is used, never held whole in memory.
pub fn read(path: &Path) -> Result<Seed, BackupError> {
    let unreadable = |source| BackupError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(unreadable)?.len();
    let whole = FileRegion::open(path, 0, size)
        .map_err(unreadable)?
        .into_data();
    let (index, len) = check(&whole, &path.display().to_string(), Some(path))?;
    let data = FileRegion::open(path, HEADER as u64, len)
        .map_err(unreadable)?
        .into_data();
    Ok(Seed { index, data })
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Checks a whole backup, reading it a piece at a time; returns the index and the data's
/// length. `path` names the file in read errors.
fn check(
    file: &SnapshotData,
    origin: &str,
    path: Option<&Path>,
) -> Result<(LogIndex, u64), BackupError> {
    let damaged = |detail: String| BackupError::Damaged {
        origin: origin.to_string(),
        detail,
    };
    let read = |at: u64, n: usize| {
        file.read_chunk(at, n).map_err(|source| match path {
            Some(path) => BackupError::Read {
                path: path.to_path_buf(),
                source,
            },
            None => damaged(source.to_string()),
        })
    };
    let size = file.len();
    let head = read(0, HEADER)?;
    if head.len() < MAGIC.len() || &head[..MAGIC.len()] != MAGIC {
        return Err(damaged(format!(
            "it does not start with {:?} (a file of another kind, or another format version)",
            String::from_utf8_lossy(MAGIC)
        )));
    }
    if size < (HEADER + TRAILER) as u64 {
        return Err(damaged(format!(
            "{size} bytes, shorter than an empty backup ({})",
            HEADER + TRAILER
        )));
    }
    let index = u64_at(&head, 8);
    let len = u64_at(&head, 16);
    let expected = (HEADER as u64)
        .checked_add(len)
        .and_then(|n| n.checked_add(padding(len) + TRAILER as u64));
    if expected != Some(size) {
        return Err(damaged(format!(
            "its header announces {len} bytes of data, which makes a file of {}, but the \
             file has {size} bytes (cut short, or bytes added)",
            expected.map_or_else(|| "more than 2^64 bytes".into(), |n| n.to_string())
        )));
    }
    let body = size - TRAILER as u64;
    let data_end = HEADER as u64 + len;
    let mut crc = 0;
    let mut zeros = true;
    let mut at = 0;
    while at < body {
        let piece = read(at, PIECE.min((body - at) as usize))?;
        if piece.is_empty() {
            return Err(damaged(format!("it ends early, at byte {at}")));
        }
        crc = crc32c::crc32c_append(crc, &piece);
        // The padding after the data must be zeros.
        let pad_from = data_end.saturating_sub(at).min(piece.len() as u64) as usize;
        zeros &= piece[pad_from..].iter().all(|&b| b == 0);
        at += piece.len() as u64;
    }
    let trailer = read(body, TRAILER)?;
    if trailer.len() != TRAILER {
        return Err(damaged("the trailer is cut short".into()));
    }
    let mut word = [0u8; 4];
    word.copy_from_slice(&trailer[..4]);
    let stored = u32::from_le_bytes(word);
    if stored != crc {
        return Err(damaged(format!(
            "checksum mismatch (stored {stored:#010x}, computed {crc:#010x}): the file \
             was changed or damaged"
        )));
    }
    if !zeros || trailer[4..].iter().any(|&b| b != 0) {
        return Err(damaged(
            "non-zero bytes in the padding or the reserved trailer (damaged, or a newer \
             format)"
                .into(),
        ));
    }
    Ok((index, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoder_in_pieces_writes_what_encode_writes() {
        for len in [0usize, 1, 487, 488, 5000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let (mut encoder, mut file) = Encoder::new(9, len as u64);
            let expected_len = encoder.file_len();
            for piece in data.chunks(100) {
                encoder.data(piece);
                file.extend_from_slice(piece);
            }
            file.extend(encoder.finish().unwrap());
            assert_eq!(file, encode(9, &data), "{len} bytes");
            assert_eq!(file.len() as u64, expected_len);
        }
        // Less data than announced is refused, not a file that fails to restore later.
        let (mut short, _) = Encoder::new(9, 10);
        short.data(b"nine byte");
        assert!(
            short
                .finish()
                .unwrap_err()
                .to_string()
                .contains("announced")
        );
    }

    #[test]
    fn a_backup_reads_back_and_every_damage_is_refused() {
        let file = encode(7, b"some state");
        // The shape etcdctl snapshot save checks: 512·n + 32 bytes.
        assert_eq!(file.len() % 512, 32);
        for len in [0, 1, 487, 488, 489, 1000, 4096] {
            assert_eq!(
                encode(1, &vec![7u8; len]).len() % 512,
                32,
                "{len} bytes of data"
            );
        }
        let seed = decode(&file).unwrap();
        assert_eq!(
            (seed.index, &seed.data.to_bytes().unwrap()[..]),
            (7, &b"some state"[..])
        );
        let empty = decode(&encode(1, b"")).unwrap();
        assert!(empty.data.is_empty());

        let refused = |bytes: &[u8], want: &str| {
            let err = decode(bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        };
        refused(b"", "does not start with");
        refused(b"SQLite format 3\0", "does not start with");
        refused(&file[..file.len() - 1], "cut short");
        let mut longer = file.clone();
        longer.push(0);
        refused(&longer, "cut short, or bytes added");
        // Every single flipped bit is caught.
        for byte in 0..file.len() {
            let mut flipped = file.clone();
            flipped[byte] ^= 0x10;
            assert!(
                decode(&flipped).is_err(),
                "a flip in byte {byte} went unnoticed"
            );
        }
        // A length that overflows is refused, not trusted.
        let mut huge = file.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        refused(&huge, "header announces");
    }

    #[test]
    fn reading_a_missing_file_names_it() {
        let err = read(Path::new("/nonexistent/backup.db"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/backup.db"), "{err}");
    }

    #[test]
    fn a_backup_file_is_checked_in_pieces_and_its_data_left_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.db");
        // Larger than one checking piece, so the checksum and the padding span pieces.
        let state: Vec<u8> = (0..(PIECE + 1000)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, encode(12, &state)).unwrap();
        let seed = read(&path).unwrap();
        assert_eq!(seed.index, 12);
        assert!(
            matches!(seed.data, SnapshotData::Source(_)),
            "{:?}",
            seed.data
        );
        assert_eq!(seed.data.to_bytes().unwrap(), state);
        let mut file = std::fs::read(&path).unwrap();
        let last_padding = file.len() - TRAILER - 1;
        file[last_padding] = 1;
        std::fs::write(&path, &file).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("backup.db"), "{err}");
        assert!(err.contains("checksum mismatch"), "{err}");
    }
}
