//! The read side: the in-memory index of every live entry (where it is on disk, and its term)
//! and a bounded cache of the newest entries. Reads of recent entries come from the cache;
//! older ones are read back from the segment files and verified again.
//!
//! Memory: 24 bytes of index per live entry ([`Loc`]), which compaction keeps bounded, plus at
//! most [`WalOptions::cache_bytes`](crate::WalOptions::cache_bytes) of cached entries (by
//! [`Entry::size_bytes`]; the newest entry is always cached).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use dengine_core::store::{SnapshotMeta, validate_range};
use dengine_core::{Entry, EntryId, HardState, LogIndex, StorageError, Term};
use dengine_storage_common::io_error;

use crate::format;
use crate::vfs::VFile;

/// Where a live entry is: its term (so `term()` needs no read), segment, offset and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) term: Term,
    pub(crate) seg: u64,
    pub(crate) offset: u32,
    pub(crate) size: u32,
}

/// Reads from a segment file span at most this many bytes at once.
const READ_SPAN: u64 = 1024 * 1024;

/// A read reserves room for at most this many entries up front (more grow as it goes).
const READ_RESERVE_MAX: u64 = 1024;

/// A live segment file, shared by the writer and the readers.
pub(crate) struct SegFile<F> {
    pub(crate) path: PathBuf,
    pub(crate) file: F,
}

/// What readers see. Updated by the writer after each write, under the write lock.
pub(crate) struct View<F> {
    pub(crate) compacted: EntryId,
    /// `locs[i]` is entry `compacted.index + 1 + i`.
    locs: VecDeque<Loc>,
    /// The newest `cache.len()` entries.
    cache: VecDeque<Entry>,
    cache_bytes: u64,
    cache_limit: u64,
    pub(crate) hard_state: HardState,
    pub(crate) snapshot: Option<SnapshotMeta>,
    pub(crate) files: BTreeMap<u64, Arc<SegFile<F>>>,
}

impl<F: VFile> View<F> {
    pub(crate) fn new(compacted: EntryId, cache_limit: u64) -> Self {
        View {
            compacted,
            locs: VecDeque::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            cache_limit,
            hard_state: HardState::default(),
            snapshot: None,
            files: BTreeMap::new(),
        }
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        self.compacted.index + 1
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.compacted.index + self.locs.len() as u64
    }

    fn cache_first(&self) -> LogIndex {
        self.last_index() + 1 - self.cache.len() as u64
    }

    pub(crate) fn loc(&self, index: LogIndex) -> Option<&Loc> {
        let at = index.checked_sub(self.first_index())?;
        self.locs.get(usize::try_from(at).ok()?)
    }

    /// A view of entries recovered from disk: `locs` from `compacted.index + 1` on, `cache`
    /// the newest of them.
    pub(crate) fn restore(
        compacted: EntryId,
        locs: VecDeque<Loc>,
        cache: VecDeque<Entry>,
        cache_limit: u64,
    ) -> Self {
        debug_assert!(cache.len() <= locs.len());
        let cache_bytes = cache.iter().map(Entry::size_bytes).sum();
        View {
            locs,
            cache,
            cache_bytes,
            ..View::new(compacted, cache_limit)
        }
    }

    /// The term at `index`, for `first_index - 1 ..= last_index`.
    pub(crate) fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index == self.compacted.index {
            return Ok(self.compacted.term);
        }
        if index < self.compacted.index {
            return Err(StorageError::Compacted {
                index,
                first_index: self.first_index(),
            });
        }
        self.loc(index)
            .map(|l| l.term)
            .ok_or(StorageError::Unavailable {
                index,
                last_index: self.last_index(),
            })
    }

    /// Discards every entry at or after `index`.
    pub(crate) fn truncate_from(&mut self, index: LogIndex) {
        let keep = index.saturating_sub(self.first_index()) as usize;
        self.locs.truncate(keep);
        while self.cache.back().is_some_and(|e| e.index >= index) {
            if let Some(e) = self.cache.pop_back() {
                self.cache_bytes -= e.size_bytes();
            }
        }
    }

    /// Appends the entry that follows the last one.
    pub(crate) fn append(&mut self, entry: Entry, loc: Loc) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.locs.push_back(loc);
        self.cache_bytes += entry.size_bytes();
        self.cache.push_back(entry);
        while self.cache_bytes > self.cache_limit && self.cache.len() > 1 {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.size_bytes();
            }
        }
    }

    /// Forgets every entry up to and including `to`, which becomes the compaction point.
    pub(crate) fn compact(&mut self, to: EntryId) {
        let drop = to.index.saturating_sub(self.compacted.index) as usize;
        let drop = drop.min(self.locs.len());
        self.locs.drain(..drop);
        while self.cache.len() > self.locs.len() {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.size_bytes();
            }
        }
        self.compacted = to;
    }

    /// Forgets the whole log; it restarts after `at`.
    pub(crate) fn reset(&mut self, at: EntryId) {
        self.locs.clear();
        self.cache.clear();
        self.cache_bytes = 0;
        self.compacted = at;
    }

    /// The entries in `range` within `max_bytes` (at least one).
    pub(crate) fn read(
        &self,
        range: Range<LogIndex>,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let (low, high) = (range.start, range.end);
        validate_range(low, high, self.first_index(), self.last_index())?;
        // Sized for the whole range (up to a bound, since `max_bytes` may stop it much
        // earlier): growing it one push at a time was about 0.3% of a member's CPU at 256
        // clients, where the leader reads every entry it sends.
        let mut out = Vec::with_capacity((high - low).min(READ_RESERVE_MAX) as usize);
        let mut bytes = 0u64;
        let mut index = low;
        let cache_first = self.cache_first();
        while index < high {
            if index >= cache_first {
                let Some(e) = self.cache.get((index - cache_first) as usize) else {
                    break;
                };
                bytes = bytes.saturating_add(e.size_bytes());
                if bytes > max_bytes && index > low {
                    return Ok(out);
                }
                out.push(e.clone());
                index += 1;
                continue;
            }
            // From the files, one span of consecutive records in one segment at a time.
            let run_end = high.min(cache_first);
            let read = self.read_span(index, run_end)?;
            for entry in read {
                bytes = bytes.saturating_add(entry.size_bytes());
                if bytes > max_bytes && index > low {
                    return Ok(out);
                }
                out.push(entry);
                index += 1;
            }
        }
        Ok(out)
    }

    /// Reads entries from `from` (not cached) on, as many as one span holds (at least one).
    fn read_span(&self, from: LogIndex, before: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let Some(first) = self.loc(from).copied() else {
            return Err(StorageError::Unavailable {
                index: from,
                last_index: self.last_index(),
            });
        };
        let mut last = first;
        let mut count = 1;
        while from + count < before {
            match self.loc(from + count) {
                Some(l)
                    if l.seg == first.seg
                        && l.offset > last.offset
                        && u64::from(l.offset) + u64::from(l.size) - u64::from(first.offset)
                            <= READ_SPAN =>
                {
                    last = *l;
                    count += 1;
                }
                _ => break,
            }
        }
        let Some(seg) = self.files.get(&first.seg) else {
            return Err(StorageError::Corrupt {
                path: PathBuf::from(crate::segment::segment_name(first.seg)),
                index: from,
                detail: "the index points into a segment that is not open".into(),
            });
        };
        let span =
            (u64::from(last.offset) + u64::from(last.size) - u64::from(first.offset)) as usize;
        let mut buf = vec![0u8; span];
        seg.file
            .read_at(&mut buf, u64::from(first.offset))
            .map_err(io_error(&seg.path, "reading entries from"))?;
        let mut out = Vec::with_capacity(count as usize);
        for index in from..from + count {
            let Some(loc) = self.loc(index) else { break };
            let at = (loc.offset - first.offset) as usize;
            let corrupt = |detail: String| StorageError::Corrupt {
                path: seg.path.clone(),
                index,
                detail: format!(
                    "record at byte offset {}: {detail}; {}",
                    loc.offset,
                    crate::segment::DAMAGED_ADVICE
                ),
            };
            let frame = format::parse_frame(&buf[at..at + loc.size as usize], first.seg)
                .map_err(|e| corrupt(e.to_string()))?;
            if frame.kind != format::KIND_ENTRY {
                return Err(corrupt(format!(
                    "record kind {} is not an entry",
                    frame.kind
                )));
            }
            let entry = format::decode_entry(frame.body).map_err(corrupt)?;
            if entry.index != index || entry.term != loc.term {
                return Err(corrupt(format!(
                    "holds entry {} of term {}, expected entry {index} of term {}",
                    entry.index, entry.term, loc.term
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }
}
