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
use dengine_node::Seed;

/// The first bytes of every backup file (format version 1).
pub const MAGIC: &[u8; 8] = b"DBACKUP1";

/// Bytes before the data: magic, index, data length.
const HEADER: usize = 8 + 8 + 8;
/// Bytes after the padding: the checksum and reserved zeros.
const TRAILER: usize = 32;
/// The header, data and padding fill whole blocks of this size.
const BLOCK: usize = 512;

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
    let pad = padding(data.len() as u64) as usize;
    let mut out = Vec::with_capacity(HEADER + data.len() + pad + TRAILER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + pad, 0);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(out.len() + TRAILER - 4, 0);
    out
}

/// Reads a backup made by [`encode`], checking every byte.
pub fn decode(bytes: &[u8]) -> Result<Seed, BackupError> {
    decode_from(bytes, "the backup")
}

/// Reads and checks the backup file at `path`.
pub fn read(path: &Path) -> Result<Seed, BackupError> {
    let bytes = std::fs::read(path).map_err(|source| BackupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode_from(&bytes, &path.display().to_string())
}

fn decode_from(bytes: &[u8], origin: &str) -> Result<Seed, BackupError> {
    let damaged = |detail: String| BackupError::Damaged {
        origin: origin.to_string(),
        detail,
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(damaged(format!(
            "it does not start with {:?} (a file of another kind, or another format version)",
            String::from_utf8_lossy(MAGIC)
        )));
    }
    if bytes.len() < HEADER + TRAILER {
        return Err(damaged(format!(
            "{} bytes, shorter than an empty backup ({})",
            bytes.len(),
            HEADER + TRAILER
        )));
    }
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let index = u64_at(8);
    let len = u64_at(16);
    let expected = (HEADER as u64)
        .checked_add(len)
        .and_then(|n| n.checked_add(padding(len) + TRAILER as u64));
    if expected != Some(bytes.len() as u64) {
        return Err(damaged(format!(
            "its header announces {len} bytes of data, which makes a file of {}, but the \
             file has {} bytes (cut short, or bytes added)",
            expected.map_or_else(|| "more than 2^64 bytes".into(), |n| n.to_string()),
            bytes.len()
        )));
    }
    let body = bytes.len() - TRAILER;
    let data_end = HEADER + len as usize;
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[body..body + 4]);
    let stored = u32::from_le_bytes(word);
    let computed = crc32c::crc32c(&bytes[..body]);
    if stored != computed {
        return Err(damaged(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file \
             was changed or damaged"
        )));
    }
    if bytes[data_end..body]
        .iter()
        .chain(&bytes[body + 4..])
        .any(|&b| b != 0)
    {
        return Err(damaged(
            "non-zero bytes in the padding or the reserved trailer (damaged, or a newer \
             format)"
                .into(),
        ));
    }
    Ok(Seed {
        index,
        data: Bytes::copy_from_slice(&bytes[HEADER..data_end]).into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
