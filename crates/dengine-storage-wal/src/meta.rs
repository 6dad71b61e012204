//! The metadata file `wal.meta`: which segments are live, the compaction point, the snapshot
//! description and the hard state as of the last metadata write, double-written in two
//! checksummed slots (A/B) so that a torn write of one slot leaves the other intact.
//!
//! Each slot (at 0 and at [`SLOT`]) is `crc32c u32 | len u32 | generation u64 | body`, the
//! CRC32C covering everything after itself up to the end of the body. A write goes to the
//! slot that does *not* hold the newest valid record, then `fdatasync`s; opening picks the
//! valid slot with the higher generation. The body is
//! `magic "DWALMETA" | version u32 | first_seg u64 | last_seg u64 | compacted term u64 |
//! compacted index u64 | hard state term u64, vote u64, commit u64 | snapshot length u32 |
//! snapshot` (the snapshot in [`dengine_storage_common::codec`]'s encoding), little-endian.
//!
//! The metadata is written only by purges, snapshots and when a new segment is activated
//! (once per segment): never on the `persist` path.

use std::path::{Path, PathBuf};

use dengine_core::{EntryId, HardState, SnapshotMeta, StorageError};
use dengine_storage_common::{codec, io_error};

use crate::vfs::{VFile, Vfs};

/// Size of one slot; the file is two slots long.
pub(crate) const SLOT: usize = 32 * 1024;
const MAGIC: &[u8; 8] = b"DWALMETA";
const VERSION: u32 = 1;
/// Slot header (crc, len, generation) plus the fixed part of the body.
const FIXED: usize = 16 + 8 + 4 + 8 * 8 + 4;

/// What the metadata file records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MetaRecord {
    /// The oldest live segment.
    pub(crate) first_seg: u64,
    /// The newest segment (the active one).
    pub(crate) last_seg: u64,
    /// The last purged entry (`EntryId::ZERO` if none).
    pub(crate) compacted: EntryId,
    /// The hard state as of this write; hard-state records in live segments override it.
    pub(crate) hard_state: HardState,
    /// The last saved snapshot description.
    pub(crate) snapshot: Option<SnapshotMeta>,
}

/// The open metadata file and the record it holds.
pub(crate) struct MetaFile<F> {
    path: PathBuf,
    file: F,
    generation: u64,
    record: MetaRecord,
}

fn corrupt(path: &Path, detail: String) -> StorageError {
    StorageError::CorruptMetadata {
        path: path.to_path_buf(),
        record: "WAL metadata",
        detail,
    }
}

fn encode(generation: u64, r: &MetaRecord) -> Result<Vec<u8>, StorageError> {
    let snapshot = r
        .snapshot
        .as_ref()
        .map(codec::encode_snapshot_meta)
        .unwrap_or_default();
    if FIXED + snapshot.len() > SLOT {
        return Err(StorageError::InvalidArgument(format!(
            "the snapshot description takes {} bytes, more than the {} bytes the WAL's \
             metadata slot holds (too many members or addresses)",
            snapshot.len(),
            SLOT - FIXED
        )));
    }
    let mut buf = Vec::with_capacity(FIXED + snapshot.len());
    buf.extend_from_slice(&[0; 8]); // crc and len, filled in below
    buf.extend_from_slice(&generation.to_le_bytes());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    for v in [
        r.first_seg,
        r.last_seg,
        r.compacted.term,
        r.compacted.index,
        r.hard_state.term,
        r.hard_state.vote.unwrap_or(0),
        r.hard_state.commit,
    ] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.extend_from_slice(&(snapshot.len() as u32).to_le_bytes());
    buf.extend_from_slice(&snapshot);
    let len = (buf.len() - 16) as u32;
    buf[4..8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&buf[4..]);
    buf[0..4].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// Where a generation's slot starts: slot A holds odd generations (the first is 1), slot B
/// even ones.
fn slot_offset(generation: u64) -> u64 {
    if generation % 2 == 1 { 0 } else { SLOT as u64 }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("the record ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
}

/// Decodes one slot: its generation and record, or why it is not valid.
fn decode(slot: &[u8]) -> Result<(u64, MetaRecord), String> {
    if slot.iter().take(16).all(|&b| b == 0) {
        return Err("never written".into());
    }
    let mut r = Reader(slot);
    let stored = r.u32()?;
    let len = r.u32()? as usize;
    if 16 + len > slot.len() {
        return Err(format!("length {len} runs past the slot"));
    }
    let computed = crc32c::crc32c(&slot[4..16 + len]);
    if stored != computed {
        return Err(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    let generation = r.u64()?;
    let mut r = Reader(&slot[16..16 + len]);
    if r.take(8)? != MAGIC {
        return Err("no DWALMETA magic".into());
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!(
            "format version {version}, this build reads {VERSION}"
        ));
    }
    let first_seg = r.u64()?;
    let last_seg = r.u64()?;
    let compacted = EntryId::new(r.u64()?, r.u64()?);
    let (term, vote, commit) = (r.u64()?, r.u64()?, r.u64()?);
    let snap_len = r.u32()? as usize;
    let snapshot = if snap_len == 0 {
        None
    } else {
        Some(codec::decode_snapshot_meta(r.take(snap_len)?).map_err(|e| e.0)?)
    };
    if first_seg > last_seg || first_seg == 0 {
        return Err(format!(
            "live segments {first_seg}..={last_seg} are not a valid range"
        ));
    }
    Ok((
        generation,
        MetaRecord {
            first_seg,
            last_seg,
            compacted,
            hard_state: HardState {
                term,
                vote: (vote != 0).then_some(vote),
                commit,
            },
            snapshot,
        },
    ))
}

impl<F: VFile> MetaFile<F> {
    /// Creates the file with `record` in slot A (generation 1) and an empty slot B, synced.
    /// The caller syncs the directory.
    pub(crate) fn create<V: Vfs<File = F>>(
        vfs: &V,
        path: &Path,
        record: MetaRecord,
    ) -> Result<Self, StorageError> {
        let file = vfs.create(path).map_err(io_error(path, "creating"))?;
        let mut buf = encode(1, &record)?;
        buf.resize(2 * SLOT, 0);
        file.write_at(&buf, 0).map_err(io_error(path, "writing"))?;
        file.sync_data().map_err(io_error(path, "syncing"))?;
        Ok(MetaFile {
            path: path.to_path_buf(),
            file,
            generation: 1,
            record,
        })
    }

    /// Opens the file and reads the newest valid slot.
    pub(crate) fn open<V: Vfs<File = F>>(vfs: &V, path: &Path) -> Result<Self, StorageError> {
        let file = match vfs.open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(
                    path,
                    "the file is missing, so the live segments, the compaction point and \
                     the snapshot are unknown; restore it from a backup, or wipe the store \
                     directory and let the member catch up from its peers"
                        .into(),
                ));
            }
            Err(e) => return Err(io_error(path, "opening")(e)),
        };
        let len = file.len().map_err(io_error(path, "reading the size of"))?;
        let mut buf = vec![0u8; (len as usize).min(2 * SLOT)];
        file.read_at(&mut buf, 0)
            .map_err(io_error(path, "reading"))?;
        buf.resize(2 * SLOT, 0);
        let a = decode(&buf[..SLOT]);
        let b = decode(&buf[SLOT..]);
        let (generation, record) = match (a, b) {
            (Ok(a), Ok(b)) => {
                if a.0 >= b.0 {
                    a
                } else {
                    b
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(a), Err(b)) => {
                return Err(corrupt(
                    path,
                    format!(
                        "neither slot holds a valid record (slot A at byte offset 0: {a}; \
                         slot B at byte offset {SLOT}: {b}); restore the file from a backup, \
                         or wipe the store directory and let the member catch up from its peers"
                    ),
                ));
            }
        };
        Ok(MetaFile {
            path: path.to_path_buf(),
            file,
            generation,
            record,
        })
    }

    /// The record on disk.
    pub(crate) fn record(&self) -> &MetaRecord {
        &self.record
    }

    /// Writes `record` to the other slot and syncs it: durable on return.
    pub(crate) fn write(&mut self, record: MetaRecord) -> Result<(), StorageError> {
        let generation = self.generation + 1;
        let buf = encode(generation, &record)?;
        self.file
            .write_at(&buf, slot_offset(generation))
            .map_err(io_error(&self.path, "writing"))?;
        self.file
            .sync_data()
            .map_err(io_error(&self.path, "syncing"))?;
        self.generation = generation;
        self.record = record;
        Ok(())
    }

    /// Checks a record would fit, without writing it.
    pub(crate) fn check_fits(record: &MetaRecord) -> Result<(), StorageError> {
        encode(0, record).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_core::Membership;

    fn record(n: u64) -> MetaRecord {
        MetaRecord {
            first_seg: n,
            last_seg: n + 2,
            compacted: EntryId::new(2, 10 * n),
            hard_state: HardState {
                term: 4,
                vote: Some(1),
                commit: 9,
            },
            snapshot: Some(SnapshotMeta {
                last_included: EntryId::new(2, 10),
                membership: Membership::new([1, 2, 3]),
            }),
        }
    }

    #[test]
    fn slots_alternate_and_a_damaged_newest_slot_falls_back_to_the_other() {
        let mut buf = vec![0u8; 2 * SLOT];
        for generation in 1..=4u64 {
            let enc = encode(generation, &record(generation)).unwrap();
            let at = slot_offset(generation) as usize;
            buf[at..at + enc.len()].copy_from_slice(&enc);
        }
        assert_eq!(decode(&buf[..SLOT]).unwrap(), (3, record(3)));
        assert_eq!(decode(&buf[SLOT..]).unwrap(), (4, record(4)));
        buf[SLOT + 40] ^= 1;
        assert!(decode(&buf[SLOT..]).unwrap_err().contains("checksum"));
        assert!(decode(&[0u8; 64]).unwrap_err().contains("never written"));
    }
}
