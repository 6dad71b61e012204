//! Creating a WAL and opening one: check the directory, read the metadata, scan every live
//! segment in order, replay its batches into the index, cut a torn tail (zeroing its
//! remains), and refuse — naming the file, the byte offset and what to do — anything that is
//! damage rather than an interrupted write.
//!
//! Opening reads each live segment whole, one at a time (memory at open: one segment), and
//! verifies every record's checksum.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dengine_core::{Entry, EntryId, HardState, LogIndex, StorageError};
use dengine_storage_common::io_error;

use crate::format::{self, Record};
use crate::meta::{MetaFile, MetaRecord};
use crate::options::{MIN_SEGMENT, WalOptions};
use crate::segment::{
    self, FileKind, Framed, META_FILE, TMP_FILE, classify, corrupt_at, preallocate, segment_path,
};
use crate::vfs::{VFile, Vfs};
use crate::view::{Loc, SegFile, View};
use crate::wal::{Active, Spare, Wal, Writer, recycle_one};

/// Creates the files of a new, empty WAL in the existing, empty directory `dir` (metadata,
/// then the first segment, then a directory sync) and opens it.
pub(crate) fn create<V: Vfs>(
    vfs: V,
    dir: &Path,
    options: WalOptions,
) -> Result<Wal<V>, StorageError> {
    MetaFile::create(
        &vfs,
        &dir.join(META_FILE),
        MetaRecord {
            first_seg: 1,
            last_seg: 1,
            compacted: EntryId::ZERO,
            hard_state: HardState::default(),
            snapshot: None,
        },
    )?;
    preallocate(&vfs, dir, &segment_path(dir, 1), options.segment_len())?;
    if options.max_spare_segments > 0 {
        // A spare beside it (named for life 0, which no segment has): the first roll renames
        // it instead of writing a new segment's zeros while the writes wait. Later rolls find
        // the segments that compaction dropped.
        preallocate(
            &vfs,
            dir,
            &segment::spare_path(dir, 0),
            options.segment_len(),
        )?;
    }
    vfs.sync_dir(dir)
        .map_err(io_error(dir, "syncing the directory"))?;
    open(vfs, dir, options)
}

fn unexpected(path: PathBuf, what: &str) -> StorageError {
    StorageError::CorruptMetadata {
        path,
        record: "store directory",
        detail: format!(
            "{what}; move it out of the store directory (the WAL refuses to guess whether \
             it matters)"
        ),
    }
}

fn missing(path: PathBuf, detail: String) -> StorageError {
    StorageError::CorruptMetadata {
        path,
        record: "WAL segment",
        detail: format!(
            "{detail}; restore the store directory from a backup, or replace the member \
             (remove it from the cluster, wipe its data directory, add it again under a new \
             id; docs/operations.md, \"Replacing a member\")"
        ),
    }
}

/// The log being rebuilt from the segments' batches.
struct Replay {
    /// Index of `locs[0]`.
    first: LogIndex,
    locs: VecDeque<Loc>,
    cache: VecDeque<Entry>,
    cache_bytes: u64,
    cache_limit: u64,
    hard_state: Option<HardState>,
}

impl Replay {
    fn apply(&mut self, seq: u64, path: &Path, batch: &[Framed]) -> Result<(), StorageError> {
        for framed in batch {
            match &framed.record {
                Record::HardState(hs) => self.hard_state = Some(*hs),
                Record::Entry(entry) => self.entry(seq, path, framed, entry.clone())?,
                Record::SegmentStart { .. } | Record::End => {}
            }
        }
        Ok(())
    }

    fn entry(
        &mut self,
        seq: u64,
        path: &Path,
        framed: &Framed,
        entry: Entry,
    ) -> Result<(), StorageError> {
        let index = entry.index;
        if self.locs.is_empty() {
            self.first = index;
        } else {
            let last = self.first + self.locs.len() as u64 - 1;
            if index > last + 1 {
                return Err(corrupt_at(
                    path,
                    framed.offset,
                    format!("entry {index} follows entry {last}: the log has a gap"),
                ));
            }
            // An entry at or before the last one overwrites the suffix from there (the
            // truncation of a conflicting suffix is recorded by the entry that replaces it).
            if index <= self.first {
                self.locs.clear();
                self.first = index;
            } else {
                self.locs.truncate((index - self.first) as usize);
            }
            while self.cache.back().is_some_and(|e| e.index >= index) {
                if let Some(e) = self.cache.pop_back() {
                    self.cache_bytes -= e.size_bytes();
                }
            }
        }
        self.locs.push_back(Loc {
            term: entry.term,
            seg: seq,
            offset: framed.offset as u32,
            size: framed.size,
        });
        self.cache_bytes += entry.size_bytes();
        self.cache.push_back(entry);
        while self.cache_bytes > self.cache_limit && self.cache.len() > 1 {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.size_bytes();
            }
        }
        Ok(())
    }
}

/// What the store directory holds.
struct Listing {
    segments: BTreeMap<u64, PathBuf>,
    spares: Vec<u64>,
    /// Whether an unfinished preallocation is there.
    tmp: bool,
}

/// Lists the directory: the segments, the spares, and anything that must not be there.
fn list<V: Vfs>(vfs: &V, dir: &Path) -> Result<Listing, StorageError> {
    let items = vfs
        .list(dir)
        .map_err(io_error(dir, "listing the store directory"))?;
    let mut segments = BTreeMap::new();
    let mut spares = Vec::new();
    let mut tmp = false;
    for item in items {
        let path = dir.join(&item.name);
        let kind = item.name.to_str().and_then(classify);
        match (kind, item.is_dir) {
            (Some(_), true) => {
                return Err(unexpected(path, "a directory where the WAL keeps a file"));
            }
            (None, _) => return Err(unexpected(path, "a file or directory the WAL never writes")),
            (Some(FileKind::Segment(seq)), false) => {
                segments.insert(seq, path);
            }
            (Some(FileKind::Spare(seq)), false) => spares.push(seq),
            (Some(FileKind::Tmp), false) => tmp = true,
            (Some(FileKind::Marker | FileKind::Meta), false) => {}
        }
    }
    Ok(Listing {
        segments,
        spares,
        tmp,
    })
}

/// Opens the WAL in `dir` and recovers its state.
pub(crate) fn open<V: Vfs>(
    vfs: V,
    dir: &Path,
    options: WalOptions,
) -> Result<Wal<V>, StorageError> {
    let Listing {
        mut segments,
        spares: spare_seqs,
        tmp,
    } = list(&vfs, dir)?;
    let mut dir_changed = false;
    let mut notes = Vec::new();
    if tmp {
        // A preallocation that did not finish: nothing refers to it.
        let path = dir.join(TMP_FILE);
        vfs.remove(&path).map_err(io_error(&path, "removing"))?;
        notes.push(format!(
            "{}: removed an unfinished segment preallocation",
            path.display()
        ));
        dir_changed = true;
    }
    let meta = MetaFile::open(&vfs, &dir.join(META_FILE))?;
    let rec = meta.record().clone();
    // Segment numbers continue from the last listed one. No file can hold frames of a life
    // above it: a segment is listed (metadata synced) before anything is written into it.
    let next_seq = rec.last_seg + 1;
    let mut spares = Vec::new();
    for seq in spare_seqs {
        let path = segment::spare_path(dir, seq);
        if seq > rec.last_seg {
            // Cannot happen (spares come from segments below the first live one); a spare
            // named like a future segment must not be mistaken for one of its life.
            vfs.remove(&path).map_err(io_error(&path, "removing"))?;
            dir_changed = true;
            continue;
        }
        let len = vfs
            .open(&path)
            .and_then(|f| f.len())
            .map_err(io_error(&path, "reading the size of"))?;
        spares.push(Spare { seq, len });
    }
    // Segments the metadata no longer (or not yet) lists: the leftovers of a purge or a
    // snapshot installation that stopped after its metadata write (below the first live
    // segment: recycled), or of a roll or installation that stopped before it (above the
    // last: never written, removed). Nothing was acknowledged from them.
    let strays: Vec<(u64, PathBuf)> = segments
        .iter()
        .filter(|(seq, _)| **seq < rec.first_seg || **seq > rec.last_seg)
        .map(|(seq, path)| (*seq, path.clone()))
        .collect();
    for (seq, path) in strays {
        segments.remove(&seq);
        if seq > rec.last_seg {
            let file = vfs.open(&path).map_err(io_error(&path, "opening"))?;
            if segment::read_start(&file, &path, seq)?.is_some() {
                return Err(missing(
                    path,
                    format!(
                        "the segment holds records, but the metadata lists segments only up \
                         to {} (the metadata file is older than the segments)",
                        rec.last_seg
                    ),
                ));
            }
            vfs.remove(&path).map_err(io_error(&path, "removing"))?;
        } else {
            recycle_one(
                &vfs,
                dir,
                &mut spares,
                options.max_spare_segments,
                seq,
                &path,
            )?;
        }
        dir_changed = true;
    }
    if dir_changed {
        vfs.sync_dir(dir)
            .map_err(io_error(dir, "syncing the directory"))?;
    }
    // Every listed segment must be there.
    let mut files = Vec::new();
    for seq in rec.first_seg..=rec.last_seg {
        let path = segment_path(dir, seq);
        if !segments.contains_key(&seq) {
            return Err(missing(
                path,
                format!(
                    "the segment is missing, but the metadata lists segments {}..={}",
                    rec.first_seg, rec.last_seg
                ),
            ));
        }
        let file = vfs.open(&path).map_err(io_error(&path, "opening"))?;
        let start = segment::read_start(&file, &path, seq)?;
        files.push((seq, Arc::new(SegFile { path, file }), start));
    }
    // Only the last segment may be empty (not started): segments are started in order.
    for pair in files.windows(2) {
        if pair[0].2.is_none() && pair[1].2.is_some() {
            return Err(corrupt_at(
                &pair[0].1.path,
                0,
                "the segment start is not valid, but a later segment has one",
            ));
        }
    }
    let mut replay = Replay {
        first: 0,
        locs: VecDeque::new(),
        cache: VecDeque::new(),
        cache_bytes: 0,
        cache_limit: options.cache_bytes,
        hard_state: None,
    };
    let mut repairs = Vec::new();
    let mut last_end = 0;
    let mut last_started = false;
    let mut last_prev_end = 0;
    for (i, (seq, seg, _)) in files.iter().enumerate() {
        let known_end = files.get(i + 1).and_then(|next| next.2);
        let len = seg
            .file
            .len()
            .map_err(io_error(&seg.path, "reading the size of"))?;
        if len > u64::from(u32::MAX) {
            return Err(corrupt_at(
                &seg.path,
                0,
                format!(
                    "the file is {len} bytes long, larger than any segment the WAL creates \
                     (4 GiB at most)"
                ),
            ));
        }
        if len < MIN_SEGMENT {
            return Err(corrupt_at(
                &seg.path,
                len,
                format!(
                    "the file is {len} bytes long, shorter than any segment the WAL creates \
                     ({MIN_SEGMENT} bytes): it was truncated"
                ),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        seg.file
            .read_at(&mut buf, 0)
            .map_err(io_error(&seg.path, "reading"))?;
        let end = segment::scan(&buf, *seq, known_end, &seg.path, |batch| {
            replay.apply(*seq, &seg.path, batch)
        })?;
        if let Some(torn) = end.torn.clone() {
            repairs.push((Arc::clone(seg), torn));
        }
        last_prev_end = if end.started {
            end.prev_end.unwrap_or(0)
        } else {
            last_end
        };
        last_end = end.end;
        last_started = end.started;
    }
    // The entries up to the compaction point are gone; the rest must start right after it.
    let compacted = rec.compacted;
    while replay.locs.front().is_some() && replay.first <= compacted.index {
        replay.locs.pop_front();
        replay.first += 1;
    }
    while replay
        .cache
        .front()
        .is_some_and(|e| e.index <= compacted.index)
    {
        replay.cache.pop_front();
    }
    if !replay.locs.is_empty() && replay.first != compacted.index + 1 {
        let (_, seg, _) = &files[0];
        return Err(missing(
            seg.path.clone(),
            format!(
                "the live log starts at entry {}, but the compaction point is entry {}: \
                 entries in between are missing",
                replay.first, compacted.index
            ),
        ));
    }
    for (seg, torn) in &repairs {
        notes.push(format!(
            "{}: cut off a torn tail at byte offset {} (a write that never completed: {})",
            seg.path.display(),
            torn.end,
            torn.what
        ));
        if torn.zero_headers.is_empty() {
            continue;
        }
        for at in &torn.zero_headers {
            seg.file
                .write_at(&[0u8; format::HEADER], *at)
                .map_err(io_error(&seg.path, "repairing the torn tail of"))?;
        }
        if options.fsync {
            seg.file
                .sync_data()
                .map_err(io_error(&seg.path, "syncing"))?;
        }
    }
    let Some((active_seq, active_seg, _)) = files.last() else {
        return Err(missing(
            dir.join(META_FILE),
            "the metadata lists no segment".into(),
        ));
    };
    let capacity = active_seg
        .file
        .len()
        .map_err(io_error(&active_seg.path, "reading the size of"))?;
    let active = Active {
        seq: *active_seq,
        seg: Arc::clone(active_seg),
        offset: last_end,
        capacity,
        started: last_started,
        dirty: false,
        prev_end: last_prev_end,
    };
    let mut view = View::restore(compacted, replay.locs, replay.cache, options.cache_bytes);
    view.hard_state = replay.hard_state.unwrap_or(rec.hard_state);
    view.snapshot = rec.snapshot.clone();
    view.files = files
        .iter()
        .map(|(seq, seg, _)| (*seq, Arc::clone(seg)))
        .collect();
    let writer = Writer {
        hard_state: view.hard_state,
        vfs,
        dir: dir.to_path_buf(),
        options,
        meta,
        active,
        spares,
        next_seq,
        failed: None,
    };
    Ok(Wal::new(dir.to_path_buf(), writer, view, notes))
}
