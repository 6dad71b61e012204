//! The core's read-only view of durable storage, and an in-memory implementation of it.
//!
//! The core never writes storage. It hands writes to the runtime in a
//! [`PersistRequest`](crate::PersistRequest) and reads older entries back through
//! [`LogReader`], which must reflect a write before the runtime reports it done with
//! [`Raft::on_persisted`](crate::Raft::on_persisted).

use crate::ready::PersistRequest;
use crate::types::{Entry, HardState, LogIndex, Term};

/// Why a log read failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The index lies before the first entry still stored (it was compacted into a snapshot).
    #[error("log index {index} is compacted; the log now starts at {first_index}")]
    Compacted {
        /// The index asked for.
        index: LogIndex,
        /// The first index still stored.
        first_index: LogIndex,
    },
    /// The index lies after the last stored entry.
    #[error("log index {index} is not available; the log ends at {last_index}")]
    Unavailable {
        /// The index asked for.
        index: LogIndex,
        /// The last index stored.
        last_index: LogIndex,
    },
    /// The storage itself failed (I/O error, corruption). The message says what and where.
    #[error("log storage failed: {0}")]
    Storage(String),
}

/// A synchronous, read-only view of the durable log.
///
/// Implementations are expected to serve reads from memory or a page cache; the core calls
/// them while handling messages. Entries before [`first_index`](LogReader::first_index) are
/// compacted; `term(first_index() - 1)` must still answer (the term of the snapshot's last
/// entry, or 0 for an empty log).
pub trait LogReader {
    /// Index of the first entry stored (1 for a log that was never compacted).
    fn first_index(&self) -> LogIndex;
    /// Index of the last entry stored (`first_index() - 1` when empty).
    fn last_index(&self) -> LogIndex;
    /// Term of the entry at `index`, for `first_index() - 1 <= index <= last_index()`.
    fn term(&self, index: LogIndex) -> Result<Term, LogError>;
    /// Appends to `out` the entries in `[low, high)`, stopping early once their total
    /// [`size_bytes`](Entry::size_bytes) would exceed `max_bytes` (but always at least one).
    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), LogError>;
}

/// A durable log kept in memory: for tests, the simulator and examples.
///
/// "Durable" here means "survives as long as this value": [`MemoryLog::persist`] is the write a
/// real runtime would make and fsync.
#[derive(Clone, Debug, Default)]
pub struct MemoryLog {
    /// Index of the entry before `entries[0]` (the compaction point).
    offset: LogIndex,
    /// Term of the entry at `offset`.
    offset_term: Term,
    entries: Vec<Entry>,
    hard_state: HardState,
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last saved hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Performs a persist request: saves the hard state, truncates any entries at or after the
    /// first new entry's index, and appends the new entries.
    pub fn persist(&mut self, request: &PersistRequest) -> Result<(), LogError> {
        if let Some(hs) = request.hard_state {
            self.hard_state = hs;
        }
        self.append(&request.entries)
    }

    /// Appends entries, first discarding every stored entry at or after `entries[0].index`.
    /// The entries must be consecutive and start at most one past the last stored index.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.offset || first.index > self.last_index() + 1 {
            return Err(LogError::Storage(format!(
                "append at index {} would leave a gap or overwrite compacted entries (log holds {}..={})",
                first.index,
                self.offset + 1,
                self.last_index()
            )));
        }
        for (i, e) in entries.iter().enumerate() {
            if e.index != first.index + i as u64 {
                return Err(LogError::Storage(format!(
                    "entries to append are not consecutive at index {}",
                    e.index
                )));
            }
        }
        let keep = (first.index - self.offset - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Replaces the whole log by a snapshot ending at `last` (a follower installing a
    /// snapshot from its leader).
    pub fn restore_snapshot(&mut self, last: crate::types::EntryId) {
        self.entries.clear();
        self.offset = last.index;
        self.offset_term = last.term;
        if self.hard_state.commit < last.index {
            self.hard_state.commit = last.index;
        }
    }

    /// Discards every entry up to and including `index`, as after a snapshot.
    pub fn compact(&mut self, index: LogIndex) -> Result<(), LogError> {
        let index = index.min(self.last_index());
        if index <= self.offset {
            return Ok(());
        }
        let term = self.term(index)?;
        let drop = (index - self.offset) as usize;
        self.entries.drain(..drop);
        self.offset = index;
        self.offset_term = term;
        Ok(())
    }
}

impl LogReader for MemoryLog {
    fn first_index(&self) -> LogIndex {
        self.offset + 1
    }

    fn last_index(&self) -> LogIndex {
        self.offset + self.entries.len() as u64
    }

    fn term(&self, index: LogIndex) -> Result<Term, LogError> {
        if index < self.offset {
            return Err(LogError::Compacted {
                index,
                first_index: self.first_index(),
            });
        }
        if index == self.offset {
            return Ok(self.offset_term);
        }
        match self.entries.get((index - self.offset - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(LogError::Unavailable {
                index,
                last_index: self.last_index(),
            }),
        }
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), LogError> {
        if low <= self.offset {
            return Err(LogError::Compacted {
                index: low,
                first_index: self.first_index(),
            });
        }
        if high > self.last_index() + 1 {
            return Err(LogError::Unavailable {
                index: high - 1,
                last_index: self.last_index(),
            });
        }
        let mut bytes = 0;
        for index in low..high {
            let Some(e) = self.entries.get((index - self.offset - 1) as usize) else {
                break;
            };
            bytes += e.size_bytes();
            if bytes > max_bytes && index > low {
                break;
            }
            out.push(e.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn e(term: Term, index: LogIndex) -> Entry {
        Entry::new(term, index, EntryPayload::Blank)
    }

    #[test]
    fn append_overwrites_the_conflicting_suffix() {
        let mut log = MemoryLog::new();
        log.append(&[e(1, 1), e(1, 2), e(1, 3)]).unwrap();
        log.append(&[e(2, 2)]).unwrap();
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.term(2), Ok(2));
        assert!(log.append(&[e(2, 4)]).is_err(), "gaps are refused");
    }

    #[test]
    fn compaction_keeps_the_term_of_the_last_compacted_entry() {
        let mut log = MemoryLog::new();
        log.append(&[e(1, 1), e(2, 2), e(3, 3)]).unwrap();
        log.compact(2).unwrap();
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Ok(2));
        assert!(matches!(log.term(1), Err(LogError::Compacted { .. })));
        let mut out = Vec::new();
        assert!(log.entries(2, 4, u64::MAX, &mut out).is_err());
        log.entries(3, 4, u64::MAX, &mut out).unwrap();
        assert_eq!(out, vec![e(3, 3)]);
    }

    #[test]
    fn entries_respect_the_byte_limit_but_return_at_least_one() {
        let mut log = MemoryLog::new();
        log.append(&[e(1, 1), e(1, 2), e(1, 3)]).unwrap();
        let mut out = Vec::new();
        log.entries(1, 4, 1, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.clear();
        log.entries(1, 4, 2 * crate::types::ENTRY_OVERHEAD_BYTES, &mut out)
            .unwrap();
        assert_eq!(out.len(), 2);
    }
}
