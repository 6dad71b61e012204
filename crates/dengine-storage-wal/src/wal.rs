//! The write side: one `persist` is one positional write of a batch (plus the `END` frame)
//! and at most one `fdatasync`; segments roll, purges drop whole segments, snapshots and the
//! segment list go to the metadata file. Synchronous: `lib.rs` runs it on tokio's blocking
//! pool, in call order.
//!
//! # Durability order
//!
//! * A batch is durable when its segment's `fdatasync` returns. Before the first batch lands
//!   in a new segment, the previous segment is synced if it holds unsynced batches (a synced
//!   write must never survive an earlier unsynced one), the new segment's name is made
//!   durable (directory fsync) and the metadata records it as the last segment.
//! * A purge syncs the active segment if needed, writes the metadata (new first segment,
//!   compaction point) and only *then* renames the dropped segments to spares: a crash in
//!   between leaves segments that the metadata no longer lists, which the next open recycles.
//! * A failed write (an `fdatasync` that failed above all) is never retried: the WAL refuses
//!   every later write until it is reopened, which recovers what really is on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dengine_core::store::{SnapshotMeta, validate_persist, validate_snapshot};
use dengine_core::{EntryId, HardState, LogIndex, PersistRequest, StorageError, StoredState, Term};
use dengine_storage_common::io_error;
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::format::{self, END_FRAME, Encoder, HARD_STATE_FRAME, PreparedEntry};
use crate::meta::{MetaFile, MetaRecord};
use crate::options::WalOptions;
use crate::segment::{preallocate, segment_path, spare_path};
use crate::vfs::{VFile, Vfs};
use crate::view::{Loc, SegFile, View};

/// The segment batches are appended to.
pub(crate) struct Active<F> {
    pub(crate) seq: u64,
    pub(crate) seg: Arc<SegFile<F>>,
    /// Where the next batch goes (the end of the last batch).
    pub(crate) offset: u64,
    /// The file's size.
    pub(crate) capacity: u64,
    /// Whether the segment's `SEGMENT_START` is written.
    pub(crate) started: bool,
    /// Whether it holds batches not yet synced.
    pub(crate) dirty: bool,
    /// Where the log ended in the previous segment (for the `SEGMENT_START`).
    pub(crate) prev_end: u64,
}

impl<F> Active<F> {
    /// Whether a batch of `need` bytes (with its `END` frame) fits after the last one, with
    /// the segment's `SEGMENT_START` before it if that is not written yet. (An unstarted
    /// segment is empty: its `offset` is 0.)
    fn has_room(&self, need: u64) -> bool {
        debug_assert!(
            self.started || self.offset == 0,
            "an unstarted segment holds bytes"
        );
        let start = if self.started {
            0
        } else {
            format::START_FRAME as u64
        };
        self.offset + start + need <= self.capacity
    }
}

/// A segment brought into place, and its size.
type NewSegment<F> = (Arc<SegFile<F>>, u64);

/// A purged segment kept for reuse.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spare {
    pub(crate) seq: u64,
    pub(crate) len: u64,
}

/// Everything only the writer touches.
pub(crate) struct Writer<V: Vfs> {
    pub(crate) vfs: V,
    pub(crate) dir: PathBuf,
    pub(crate) options: WalOptions,
    pub(crate) meta: MetaFile<V::File>,
    pub(crate) active: Active<V::File>,
    pub(crate) spares: Vec<Spare>,
    /// The sequence number the next segment gets; above every life any file ever had.
    pub(crate) next_seq: u64,
    /// The newest hard state handed to `persist` (perhaps not synced yet).
    pub(crate) hard_state: HardState,
    /// Set by a failed write: every later write is refused.
    pub(crate) failed: Option<String>,
}

/// The write-ahead log: the writer behind a mutex, the readers' view behind a lock of its
/// own, so that reads never wait for an `fdatasync`.
pub(crate) struct Wal<V: Vfs> {
    pub(crate) dir: PathBuf,
    /// What opening repaired, one line each.
    pub(crate) notes: Vec<String>,
    writer: Mutex<Writer<V>>,
    view: RwLock<View<V::File>>,
}

impl<V: Vfs> Wal<V> {
    pub(crate) fn new(
        dir: PathBuf,
        writer: Writer<V>,
        view: View<V::File>,
        notes: Vec<String>,
    ) -> Self {
        Wal {
            dir,
            notes,
            writer: Mutex::new(writer),
            view: RwLock::new(view),
        }
    }

    fn writer(&self) -> MutexGuard<'_, Writer<V>> {
        self.writer.lock()
    }

    pub(crate) fn view(&self) -> RwLockReadGuard<'_, View<V::File>> {
        self.view.read()
    }

    fn view_mut(&self) -> RwLockWriteGuard<'_, View<V::File>> {
        self.view.write()
    }

    /// Runs a write that has passed validation; an error marks the writer failed.
    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Writer<V>, &Self) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut w = self.writer();
        if let Some(first) = &w.failed {
            return Err(StorageError::Backend {
                path: self.dir.clone(),
                op,
                detail: format!(
                    "an earlier write failed ({first}); the WAL refuses writes until it is \
                     reopened (a failed fsync cannot be retried safely)"
                ),
            });
        }
        let result = f(&mut w, self);
        if let Err(e) = &result
            && !matches!(e, StorageError::InvalidArgument(_))
        {
            w.failed = Some(e.to_string());
        }
        result
    }

    pub(crate) fn load_state(&self) -> StoredState {
        let v = self.view();
        StoredState {
            hard_state: v.hard_state,
            first_index: v.first_index(),
            last_index: v.last_index(),
            snapshot_meta: v.snapshot.clone(),
        }
    }

    pub(crate) fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.view().term(index)
    }

    pub(crate) fn persist(&self, req: &PersistRequest) -> Result<(), StorageError> {
        self.write("persisting to", |w, wal| {
            {
                let v = wal.view();
                validate_persist(req, v.compacted.index, v.last_index())?;
            }
            w.persist(req, wal)
        })
    }

    /// Whether `persist(req)` would only write a record into the active segment's page
    /// cache: no sync, no entries, and room in the segment (no roll, no growth).
    pub(crate) fn writes_in_place(&self, req: &PersistRequest) -> bool {
        if req.must_sync || !req.entries.is_empty() {
            return false;
        }
        let need = if req.hard_state.is_some() {
            (HARD_STATE_FRAME + END_FRAME) as u64
        } else {
            0
        };
        let w = self.writer();
        w.failed.is_none() && w.active.has_room(need)
    }

    pub(crate) fn purge(&self, up_to: LogIndex) -> Result<(), StorageError> {
        self.write("purging", |w, wal| w.purge(up_to, wal))
    }

    pub(crate) fn snapshot(&self, meta: &SnapshotMeta, reset: bool) -> Result<(), StorageError> {
        self.write("saving a snapshot in", |w, wal| {
            {
                let v = wal.view();
                let at = meta.last_included;
                let term_at = if at.index > v.compacted.index {
                    v.loc(at.index).map(|l| l.term)
                } else {
                    None
                };
                validate_snapshot(meta, v.compacted, term_at, reset)?;
            }
            if reset {
                w.reset(meta, wal)
            } else {
                w.save_snapshot(meta, wal)
            }
        })
    }

    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        self.write("syncing", |w, _| w.sync_active())
    }
}

impl<V: Vfs> Writer<V> {
    fn file_err(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = self.active.seg.path.clone();
        move |e| io_error(&path, op)(e)
    }

    /// Makes every batch in the active segment durable.
    pub(crate) fn sync_active(&mut self) -> Result<(), StorageError> {
        if self.active.dirty && self.options.fsync {
            self.active
                .seg
                .file
                .sync_data()
                .map_err(self.file_err("syncing"))?;
        }
        self.active.dirty = false;
        Ok(())
    }

    fn persist(&mut self, req: &PersistRequest, wal: &Wal<V>) -> Result<(), StorageError> {
        let prepared: Vec<PreparedEntry<'_>> = req.entries.iter().map(PreparedEntry::new).collect();
        let hs_len = if req.hard_state.is_some() {
            HARD_STATE_FRAME
        } else {
            0
        };
        let body: usize = hs_len
            + prepared
                .iter()
                .map(|p| format::frame_len(p.body_len()))
                .sum::<usize>();
        if body == 0 {
            return if req.must_sync {
                self.sync_active()
            } else {
                Ok(())
            };
        }
        let start_len = format::START_FRAME as u64;
        let need = body as u64 + END_FRAME as u64;
        if need + start_len > u64::from(u32::MAX) {
            return Err(StorageError::InvalidArgument(format!(
                "a batch of {need} bytes exceeds the WAL's 4 GiB segment limit"
            )));
        }
        if !self.active.has_room(need) {
            if self.active.started {
                self.roll(need + start_len, wal)?;
            } else {
                self.grow_active(need + start_len)?;
            }
        }
        let a = &mut self.active;
        let mut enc = Encoder::new(a.seq, need as usize + start_len as usize);
        if !a.started {
            enc.segment_start(a.prev_end, a.capacity);
        }
        if let Some(hs) = &req.hard_state {
            enc.hard_state(hs, prepared.is_empty());
        }
        let mut locs = Vec::with_capacity(prepared.len());
        for (i, p) in prepared.iter().enumerate() {
            let (at, size) = enc.entry(p, i + 1 == prepared.len());
            locs.push(Loc {
                term: req.entries[i].term,
                seg: a.seq,
                offset: (a.offset + at as u64) as u32,
                size: size as u32,
            });
        }
        let batch_len = enc.len() as u64;
        let buf = enc.finish_with_end();
        a.seg
            .file
            .write_at(&buf, a.offset)
            .map_err(io_error(&a.seg.path, "writing"))?;
        a.offset += batch_len;
        a.started = true;
        a.dirty = true;
        if req.must_sync {
            self.sync_active()?;
        }
        if let Some(hs) = req.hard_state {
            self.hard_state = hs;
        }
        let mut v = wal.view_mut();
        if let Some(hs) = req.hard_state {
            v.hard_state = hs;
        }
        if let Some(first) = req.entries.first() {
            v.truncate_from(first.index);
            for (entry, loc) in req.entries.iter().zip(locs) {
                v.append(entry.clone(), loc);
            }
        }
        Ok(())
    }

    /// Makes the empty active segment at least `len` bytes long (for a batch larger than a
    /// segment). The batch's `fdatasync` makes the new size durable with it.
    fn grow_active(&mut self, len: u64) -> Result<(), StorageError> {
        let len = len.next_multiple_of(4096);
        self.active
            .seg
            .file
            .set_len(len)
            .map_err(self.file_err("growing"))?;
        self.active.capacity = len;
        Ok(())
    }

    /// Brings a segment for life `seq` into place under its name, durably: a spare of at
    /// least `len` bytes if there is one, else a new preallocated file.
    fn new_segment(&mut self, seq: u64, len: u64) -> Result<NewSegment<V::File>, StorageError> {
        let path = segment_path(&self.dir, seq);
        let (file, capacity) = match self.spares.iter().position(|s| s.len >= len) {
            Some(i) => {
                let spare = self.spares.swap_remove(i);
                let from = spare_path(&self.dir, spare.seq);
                self.vfs
                    .rename(&from, &path)
                    .map_err(io_error(&path, "renaming a spare segment to"))?;
                let file = self.vfs.open(&path).map_err(io_error(&path, "opening"))?;
                (file, spare.len)
            }
            None => {
                let len = len.max(self.options.segment_len()).next_multiple_of(4096);
                (preallocate(&self.vfs, &self.dir, &path, len)?, len)
            }
        };
        self.vfs
            .sync_dir(&self.dir)
            .map_err(io_error(&self.dir, "syncing the directory"))?;
        Ok((Arc::new(SegFile { path, file }), capacity))
    }

    /// Moves on to a new segment of at least `len` bytes.
    fn roll(&mut self, len: u64, wal: &Wal<V>) -> Result<(), StorageError> {
        // A synced batch in the new segment must not survive an unsynced one in this one.
        self.sync_active()?;
        let seq = self.next_seq;
        let (seg, capacity) = self.new_segment(seq, len)?;
        self.next_seq += 1;
        let record = MetaRecord {
            last_seg: seq,
            ..self.meta.record().clone()
        };
        self.meta.write(record)?;
        wal.view_mut().files.insert(seq, Arc::clone(&seg));
        let prev_end = self.active.offset;
        self.active = Active {
            seq,
            seg,
            offset: 0,
            capacity,
            started: false,
            dirty: false,
            prev_end,
        };
        Ok(())
    }

    fn purge(&mut self, up_to: LogIndex, wal: &Wal<V>) -> Result<(), StorageError> {
        let (compacted, last) = {
            let v = wal.view();
            (v.compacted, v.last_index())
        };
        // Past the end, purge the whole log (as `MemoryStore` does).
        let up_to = up_to.min(last);
        if up_to <= compacted.index {
            return self.sync_active();
        }
        let term = wal.view().term(up_to)?;
        // Durable on return, every earlier write included; and the hard state recorded
        // below must not get ahead of the segments.
        self.sync_active()?;
        let keep_from = {
            let v = wal.view();
            match v.loc(up_to + 1) {
                Some(loc) => loc.seg,
                None => self.active.seq,
            }
        };
        let record = MetaRecord {
            first_seg: keep_from,
            compacted: EntryId::new(term, up_to),
            hard_state: self.hard_state,
            ..self.meta.record().clone()
        };
        self.meta.write(record)?;
        let dropped = {
            let mut v = wal.view_mut();
            v.compact(EntryId::new(term, up_to));
            let kept = v.files.split_off(&keep_from);
            std::mem::replace(&mut v.files, kept)
        };
        self.recycle(
            dropped
                .into_iter()
                .map(|(seq, seg)| (seq, seg.path.clone()))
                .collect(),
        )
    }

    fn save_snapshot(&mut self, meta: &SnapshotMeta, wal: &Wal<V>) -> Result<(), StorageError> {
        let record = MetaRecord {
            snapshot: Some(meta.clone()),
            hard_state: self.hard_state,
            ..self.meta.record().clone()
        };
        MetaFile::<V::File>::check_fits(&record)?;
        self.sync_active()?;
        self.meta.write(record)?;
        wal.view_mut().snapshot = Some(meta.clone());
        Ok(())
    }

    fn reset(&mut self, meta: &SnapshotMeta, wal: &Wal<V>) -> Result<(), StorageError> {
        let at = meta.last_included;
        let probe = MetaRecord {
            snapshot: Some(meta.clone()),
            ..self.meta.record().clone()
        };
        MetaFile::<V::File>::check_fits(&probe)?;
        self.sync_active()?;
        // The log restarts in a fresh segment; every older one is dropped.
        let seq = self.next_seq;
        let (seg, capacity) = self.new_segment(seq, self.options.segment_len())?;
        self.next_seq += 1;
        self.meta.write(MetaRecord {
            first_seg: seq,
            last_seg: seq,
            compacted: at,
            hard_state: self.hard_state,
            snapshot: Some(meta.clone()),
        })?;
        let dropped = {
            let mut v = wal.view_mut();
            v.reset(at);
            v.snapshot = Some(meta.clone());
            let dropped = std::mem::take(&mut v.files);
            v.files.insert(seq, Arc::clone(&seg));
            dropped
        };
        self.active = Active {
            seq,
            seg,
            offset: 0,
            capacity,
            started: false,
            dirty: false,
            prev_end: 0,
        };
        self.recycle(
            dropped
                .into_iter()
                .map(|(seq, seg)| (seq, seg.path.clone()))
                .collect(),
        )
    }

    /// Renames dropped segments to spares (up to the limit; deletes the rest), then syncs
    /// the directory.
    pub(crate) fn recycle(&mut self, dropped: Vec<(u64, PathBuf)>) -> Result<(), StorageError> {
        if dropped.is_empty() {
            return Ok(());
        }
        for (seq, path) in dropped {
            recycle_one(
                &self.vfs,
                &self.dir,
                &mut self.spares,
                self.options.max_spare_segments,
                seq,
                &path,
            )?;
        }
        self.vfs
            .sync_dir(&self.dir)
            .map_err(io_error(&self.dir, "syncing the directory"))
    }
}

/// Renames segment `seq` at `path` to a spare, or deletes it if there are enough spares.
pub(crate) fn recycle_one<V: Vfs>(
    vfs: &V,
    dir: &Path,
    spares: &mut Vec<Spare>,
    max_spares: usize,
    seq: u64,
    path: &Path,
) -> Result<(), StorageError> {
    if spares.len() < max_spares {
        let len = vfs
            .open(path)
            .and_then(|f| f.len())
            .map_err(io_error(path, "reading the size of"))?;
        let to = spare_path(dir, seq);
        vfs.rename(path, &to)
            .map_err(io_error(&to, "renaming a purged segment to"))?;
        spares.push(Spare { seq, len });
    } else {
        vfs.remove(path)
            .map_err(io_error(path, "removing a purged segment"))?;
    }
    Ok(())
}
