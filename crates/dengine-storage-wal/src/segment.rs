//! Segment files: their names, their preallocation, and the scan that recovers a segment's
//! batches and decides where its log ends — cleanly, at a torn tail, or at corruption.
//!
//! # Torn tail or corruption
//!
//! A scan reads frames from offset 0. It stops cleanly at a valid `END` frame (written after
//! every batch, overwritten by the next). Anything else that is not a valid frame of this
//! segment's life — zeros, stale bytes of an earlier life, a bad checksum, a header that runs
//! past the file — is *either* the tail of a write that never completed (power loss before
//! the `fdatasync`) *or* damage to bytes that were written and synced. They are told apart
//! by what follows: writes reach the disk in order, so if any valid frame of this life lies
//! *after* the bad bytes, those bytes had been written whole and are **corruption** (an error
//! naming the file and the byte offset); if nothing valid follows, they are a **torn tail**,
//! and the log ends after the last complete batch (a batch is complete when its last frame,
//! flagged `COMMIT`, is valid). A segment that is not the last one has a known end (the next
//! segment's `SEGMENT_START` records it), and any bad frame before that end is corruption.

use std::path::{Path, PathBuf};

use dengine_core::StorageError;
use dengine_storage_common::io_error;

use crate::format::{self, ALIGN, FLAG_COMMIT, FrameError, HEADER, Record};
use crate::vfs::{VFile, Vfs};

/// Name of the metadata file.
pub(crate) const META_FILE: &str = "wal.meta";
/// Name of a segment being preallocated (renamed to its segment name when complete).
pub(crate) const TMP_FILE: &str = "segment.tmp";
/// The name of the first segment, [`segment_name`]`(1)`: what an interrupted creation leaves.
pub(crate) const FIRST_SEGMENT: &str = "00000000000000000001.wal";
const SEGMENT_EXT: &str = ".wal";
const SPARE_EXT: &str = ".spare";
/// Zeros are written in pieces of this size when a segment is preallocated.
const ZERO_CHUNK: usize = 1024 * 1024;

/// The name of live segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:020}{SEGMENT_EXT}")
}

/// The name of a purged segment kept for reuse; `seq` is the life it last had.
pub(crate) fn spare_name(seq: u64) -> String {
    format!("{seq:020}{SPARE_EXT}")
}

/// What a name in the store directory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// The store marker (written by `dengine-storage-common`).
    Marker,
    /// `wal.meta`.
    Meta,
    /// A preallocation that did not finish.
    Tmp,
    /// A segment, with its sequence number.
    Segment(u64),
    /// A spare, with the sequence number of its last life.
    Spare(u64),
}

/// Classifies a directory entry; `None` for a name the WAL never writes.
pub(crate) fn classify(name: &str) -> Option<FileKind> {
    if name == dengine_storage_common::codec::MARKER_FILE {
        return Some(FileKind::Marker);
    }
    if name == META_FILE {
        return Some(FileKind::Meta);
    }
    if name == TMP_FILE {
        return Some(FileKind::Tmp);
    }
    let number = |stem: &str| {
        (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
            .then(|| stem.parse::<u64>().ok())
            .flatten()
    };
    if let Some(stem) = name.strip_suffix(SEGMENT_EXT) {
        return number(stem).map(FileKind::Segment);
    }
    if let Some(stem) = name.strip_suffix(SPARE_EXT) {
        return number(stem).map(FileKind::Spare);
    }
    None
}

/// What an operator should do about a damaged segment.
pub(crate) const DAMAGED_ADVICE: &str = "the WAL cannot tell what the damaged bytes held, so it \
     will not guess; do not edit the file: restore the directory from a backup, or replace the \
     member (remove it from the cluster, wipe its data directory, add it again under a new id: \
     it catches up from the others; docs/operations.md, \"Replacing a member\")";

/// The error for damaged bytes at `offset` of `path`.
pub(crate) fn corrupt_at(path: &Path, offset: u64, detail: impl std::fmt::Display) -> StorageError {
    StorageError::CorruptMetadata {
        path: path.to_path_buf(),
        record: "WAL",
        detail: format!("at byte offset {offset}: {detail}; {DAMAGED_ADVICE}"),
    }
}

/// Creates segment `path` of `len` bytes, all written with zeros (so that later writes
/// overwrite allocated blocks instead of allocating, which syncs about twice as fast), via a
/// temporary file that is synced before it is renamed. The caller syncs the directory.
pub(crate) fn preallocate<V: Vfs>(
    vfs: &V,
    dir: &Path,
    path: &Path,
    len: u64,
) -> Result<V::File, StorageError> {
    let tmp = dir.join(TMP_FILE);
    let file = vfs.create(&tmp).map_err(io_error(&tmp, "creating"))?;
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(ZERO_CHUNK as u64) as usize;
        file.write_at(&zeros[..n], at)
            .map_err(io_error(&tmp, "preallocating"))?;
        at += n as u64;
    }
    file.sync_data().map_err(io_error(&tmp, "syncing"))?;
    vfs.rename(&tmp, path)
        .map_err(io_error(path, "renaming a new segment to"))?;
    Ok(file)
}

/// One valid frame of a complete batch.
#[derive(Clone, Debug)]
pub(crate) struct Framed {
    /// Byte offset in the segment.
    pub(crate) offset: u64,
    /// Size on disk.
    pub(crate) size: u32,
    /// What it holds.
    pub(crate) record: Record,
}

/// Where a scanned segment's log ends, and what recovery must fix.
#[derive(Clone, Debug, Default)]
pub(crate) struct ScanEnd {
    /// Whether the segment's life has started (its first frame is a valid `SEGMENT_START`).
    pub(crate) started: bool,
    /// The `prev_end` of the `SEGMENT_START`.
    pub(crate) prev_end: Option<u64>,
    /// The end of the last complete batch: where the next write goes.
    pub(crate) end: u64,
    /// A torn tail cut off after `end`.
    pub(crate) torn: Option<Torn>,
}

/// The remains of an incomplete write after the end of the log.
#[derive(Clone, Debug)]
pub(crate) struct Torn {
    /// Where the log now ends (the end of the last complete batch).
    pub(crate) end: u64,
    /// Offsets of frame headers to zero, in this order, before writing there again.
    pub(crate) zero_headers: Vec<u64>,
    /// What was found, for the report.
    pub(crate) what: String,
}

/// Reads the first frame of a segment: its `prev_end` if it is a valid `SEGMENT_START`.
pub(crate) fn read_start<F: VFile>(
    file: &F,
    path: &Path,
    seq: u64,
) -> Result<Option<u64>, StorageError> {
    let mut buf = [0u8; format::START_FRAME];
    let len = file.len().map_err(io_error(path, "reading the size of"))?;
    if len < buf.len() as u64 {
        return Ok(None);
    }
    file.read_at(&mut buf, 0)
        .map_err(io_error(path, "reading"))?;
    Ok(match format::parse_frame(&buf, seq) {
        Ok(frame) => match format::decode(&frame) {
            Ok(Record::SegmentStart { prev_end, .. }) => Some(prev_end),
            _ => None,
        },
        Err(_) => None,
    })
}

/// The first offset at or after `from` (aligned) where a valid frame of life `seq` starts.
fn find_valid_after(buf: &[u8], from: usize, seq: u64) -> Option<usize> {
    let from = format::pad(from);
    let seq_bytes = seq.to_le_bytes();
    (from..buf.len().saturating_sub(HEADER - 1))
        .step_by(ALIGN)
        .find(|&p| buf[p + 8..p + 16] == seq_bytes && format::parse_frame(&buf[p..], seq).is_ok())
}

/// Scans segment `seq` (its bytes in `buf`), handing each complete batch to `on_batch` in
/// order. `known_end` is where the log must end in this segment, if a later segment says so.
pub(crate) fn scan(
    buf: &[u8],
    seq: u64,
    known_end: Option<u64>,
    path: &Path,
    mut on_batch: impl FnMut(&[Framed]) -> Result<(), StorageError>,
) -> Result<ScanEnd, StorageError> {
    let limit = match known_end {
        Some(end) if end as usize > buf.len() => {
            return Err(corrupt_at(
                path,
                buf.len() as u64,
                format!(
                    "the file is {} bytes long, but the next segment records that the log \
                     continued here up to byte offset {end} (the file was truncated)",
                    buf.len()
                ),
            ));
        }
        Some(end) => end as usize,
        None => buf.len(),
    };
    let mut out = ScanEnd::default();
    let mut pos = 0usize;
    let mut pending: Vec<Framed> = Vec::new();
    loop {
        if known_end.is_some() && pos == limit {
            if let Some(first) = pending.first() {
                return Err(corrupt_at(
                    path,
                    first.offset,
                    "a batch here is not complete at the end the next segment records",
                ));
            }
            out.end = pos as u64;
            return Ok(out);
        }
        let frame = match format::parse_frame(&buf[pos..limit], seq) {
            Ok(frame) => frame,
            Err(e) => return tail(buf, pos, seq, known_end, path, out, &pending, e),
        };
        let record = format::decode(&frame).map_err(|e| {
            corrupt_at(
                path,
                pos as u64,
                format!("a record with a valid checksum cannot be decoded ({e})"),
            )
        })?;
        match (&record, pos) {
            (Record::SegmentStart { prev_end, seg_len }, 0) => {
                if (buf.len() as u64) < *seg_len {
                    return Err(corrupt_at(
                        path,
                        buf.len() as u64,
                        format!(
                            "the file is {} bytes long, but the segment was created with \
                             {seg_len} bytes: it was truncated",
                            buf.len()
                        ),
                    ));
                }
                out.started = true;
                out.prev_end = Some(*prev_end);
            }
            (Record::SegmentStart { .. }, _) => {
                return Err(corrupt_at(path, pos as u64, "a second segment start"));
            }
            (_, 0) => {
                return Err(corrupt_at(
                    path,
                    0,
                    "the first record is not a segment start",
                ));
            }
            (Record::End, _) if known_end.is_none() && pending.is_empty() => {
                out.end = pos as u64;
                return Ok(out);
            }
            (Record::End, _) => {
                return Err(corrupt_at(
                    path,
                    pos as u64,
                    "the log ends here, before the end the next segment records or inside a batch",
                ));
            }
            _ => {}
        }
        pending.push(Framed {
            offset: pos as u64,
            size: frame.size as u32,
            record,
        });
        pos += frame.size;
        if frame.flags & FLAG_COMMIT != 0 {
            on_batch(&pending)?;
            pending.clear();
            out.end = pos as u64;
        }
    }
}

/// The scan met bytes at `pos` that are not a valid frame: decides torn tail or corruption.
#[allow(clippy::too_many_arguments)]
fn tail(
    buf: &[u8],
    pos: usize,
    seq: u64,
    known_end: Option<u64>,
    path: &Path,
    mut out: ScanEnd,
    pending: &[Framed],
    why: FrameError,
) -> Result<ScanEnd, StorageError> {
    if known_end.is_some() && !bug!(CorruptionAsTornTail) {
        return Err(corrupt_at(
            path,
            pos as u64,
            format!(
                "{why}, inside the part of the segment that the next segment records as written"
            ),
        ));
    }
    if let Some(later) = find_valid_after(buf, pos + 1, seq)
        && !bug!(CorruptionAsTornTail)
    {
        return Err(corrupt_at(
            path,
            pos as u64,
            format!(
                "{why}, but a valid record of this segment follows at byte offset {later}, so \
                 these bytes had been written whole: this is damage, not a torn write"
            ),
        ));
    }
    // A torn tail: the log ends after the last complete batch. The incomplete batch's valid
    // frames must not be taken for records later, when a new batch overwrites only part of
    // them and is itself torn: their headers are zeroed, the last one first, so that a power
    // loss during the repair still leaves valid frames only *before* zeroed ones.
    let nothing_written = matches!(
        why,
        FrameError::Zeros | FrameError::OtherLife { .. } | FrameError::ShortHeader
    );
    if pending.is_empty() && nothing_written {
        // Never-written space (zeros, or a recycled segment's old bytes) right after the
        // last batch: a clean end whose END frame did not make it, or an unused segment.
        return Ok(out);
    }
    if bug!(TornTailAsCorruption) {
        return Err(corrupt_at(
            path,
            pos as u64,
            format!("{why} (taken for damage)"),
        ));
    }
    let what = if pending.is_empty() {
        format!("{why} at byte offset {pos}")
    } else {
        format!(
            "an incomplete batch of {} valid records from byte offset {}, then {why} at byte \
             offset {pos}",
            pending.len(),
            out.end
        )
    };
    out.torn = Some(Torn {
        end: out.end,
        zero_headers: pending.iter().rev().map(|f| f.offset).collect(),
        what,
    });
    Ok(out)
}

/// The path of segment `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_name(seq))
}

/// The path of spare `seq` in `dir`.
pub(crate) fn spare_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(spare_name(seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Encoder, PreparedEntry};
    use dengine_core::{Entry, EntryPayload};

    fn segment(seq: u64, batches: u64) -> Vec<u8> {
        let mut out = vec![0u8; 4096];
        let mut at = 0;
        for b in 0..batches {
            let mut enc = Encoder::new(seq, 0);
            if b == 0 {
                enc.segment_start(0, 4096);
            }
            let e = Entry::new(1, b + 1, EntryPayload::Normal(vec![b as u8; 40].into()));
            enc.entry(&PreparedEntry::new(&e), true);
            let len = enc.len();
            let bytes = enc.finish_with_end();
            out[at..at + bytes.len()].copy_from_slice(&bytes);
            at += len;
        }
        out
    }

    fn run(buf: &[u8], seq: u64) -> Result<(ScanEnd, usize), StorageError> {
        let mut batches = 0;
        let end = scan(buf, seq, None, Path::new("s"), |_| {
            batches += 1;
            Ok(())
        })?;
        Ok((end, batches))
    }

    #[test]
    fn the_first_segment_is_named_as_segment_name_says() {
        assert_eq!(FIRST_SEGMENT, segment_name(1));
    }

    #[test]
    fn names_round_trip_and_strangers_are_not_ours() {
        assert_eq!(classify(&segment_name(42)), Some(FileKind::Segment(42)));
        assert_eq!(classify(&spare_name(7)), Some(FileKind::Spare(7)));
        assert_eq!(classify("wal.meta"), Some(FileKind::Meta));
        for odd in ["1.wal", "notes.txt", "0000000000000000000x.wal", ""] {
            assert_eq!(classify(odd), None, "{odd}");
        }
    }

    #[test]
    fn clean_end_torn_tail_and_corruption_are_told_apart() {
        let buf = segment(3, 3);
        let (end, batches) = run(&buf, 3).unwrap();
        assert_eq!(batches, 4); // the segment start is a batch of its own
        assert!(end.torn.is_none() && end.started);
        let clean_end = end.end as usize;
        // A torn write of the last batch: its tail (and the END) never reached the disk.
        let mut torn = buf.clone();
        let last = clean_end - format::frame_len(17 + 40);
        torn[last + 30..].fill(0);
        let (end, batches) = run(&torn, 3).unwrap();
        assert_eq!((end.end as usize, batches), (last, 3));
        assert!(end.torn.is_some());
        // A flipped byte in the first entry, with valid records after it: corruption.
        let mut flipped = buf.clone();
        flipped[format::START_FRAME + HEADER + 20] ^= 1;
        let err = run(&flipped, 3).unwrap_err().to_string();
        assert!(
            err.contains("byte offset 40") && err.contains("damage"),
            "{err}"
        );
        // A flipped byte in the last entry: the END after it still proves it was written.
        let mut flipped = buf.clone();
        flipped[last + HEADER + 3] ^= 1;
        assert!(run(&flipped, 3).is_err());
        // Stale frames of another life are not this segment's log.
        let (end, batches) = run(&buf, 4).unwrap();
        assert_eq!((end.end, batches, end.started), (0, 0, false));
    }

    /// The checks above fail if recovery skips the checksum, takes a torn tail for damage, or
    /// takes damage for a torn tail (cutting synced records without a word).
    #[test]
    fn each_deliberate_recovery_bug_fails_the_checks() {
        use crate::bugs::{RecoveryBug, caught};
        for bug in [
            RecoveryBug::SkipChecksum,
            RecoveryBug::TornTailAsCorruption,
            RecoveryBug::CorruptionAsTornTail,
        ] {
            assert!(
                caught(bug, clean_end_torn_tail_and_corruption_are_told_apart),
                "{bug:?} not caught"
            );
        }
    }
}
