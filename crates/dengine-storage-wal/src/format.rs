//! The on-disk record format of a segment: pure encoding and decoding, no I/O.
//!
//! A segment is a sequence of 8-byte-aligned **frames**. Every frame is
//!
//! ```text
//! 0  crc32c  u32   CRC32C (Castagnoli) of bytes 4 .. 24 + len
//! 4  len     u32   length of the body (without padding)
//! 8  seq     u64   the segment's life: the sequence number it was activated with
//! 16 kind    u8    SEGMENT_START | ENTRY | HARD_STATE | END
//! 17 flags   u8    bit 0: COMMIT, the last frame of a batch (one `persist` call)
//! 18 zero    [u8; 6]
//! 24 body    [u8; len], then zeros up to the next multiple of 8
//! ```
//!
//! All integers are little-endian. `seq` is what tells this life's frames from the stale bytes
//! a recycled segment still holds from an earlier life: a frame counts only if its `seq` is
//! the segment's own and its checksum (which covers `seq`) matches.
//!
//! Bodies: `SEGMENT_START` = `prev_end u64 | seg_len u64` (where the log ended in the
//! previous segment, and the size this segment file was given);
//! `ENTRY` = `term u64 | index u64 | payload kind u8 | payload` (a membership payload is
//! [`dengine_storage_common::codec`]'s entry record, so that all backends agree on it);
//! `HARD_STATE` = `term u64 | vote u64 (0 = none) | commit u64`; `END` is empty.
//!
//! Every write of a batch is followed, in the same write, by an `END` frame that the next
//! batch overwrites: a valid `END` is how a scan knows the log ended cleanly, and a valid
//! frame found *after* a damaged one proves that the damaged bytes had been written whole
//! (writes reach the disk in order), which makes them corruption rather than a torn tail.

use bytes::Bytes;
use dengine_core::{Entry, EntryPayload, HardState};
use dengine_storage_common::codec;

/// Size of a frame header.
pub(crate) const HEADER: usize = 24;
/// Frames start at multiples of this.
pub(crate) const ALIGN: usize = 8;
/// Size of a `SEGMENT_START` frame.
pub(crate) const START_FRAME: usize = frame_len(16);
/// Size of an `END` frame (header only).
pub(crate) const END_FRAME: usize = HEADER;
/// Size of a `HARD_STATE` frame's body: term, vote, commit.
const HARD_STATE_BODY: usize = 24;
/// Size of a `HARD_STATE` frame.
pub(crate) const HARD_STATE_FRAME: usize = frame_len(HARD_STATE_BODY);

pub(crate) const KIND_SEGMENT_START: u8 = 1;
pub(crate) const KIND_ENTRY: u8 = 2;
pub(crate) const KIND_HARD_STATE: u8 = 3;
pub(crate) const KIND_END: u8 = 4;

/// Flag of the last frame of a batch.
pub(crate) const FLAG_COMMIT: u8 = 1;

const PAYLOAD_BLANK: u8 = 0;
const PAYLOAD_NORMAL: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;

/// Body length of an entry before its payload.
const ENTRY_HEAD: usize = 17;

/// Rounds `len` up to the frame alignment.
pub(crate) const fn pad(len: usize) -> usize {
    len.div_ceil(ALIGN) * ALIGN
}

/// Size on disk of a frame with a body of `body_len` bytes.
pub(crate) const fn frame_len(body_len: usize) -> usize {
    HEADER + pad(body_len)
}

/// Why bytes at an offset are not a valid frame of this segment's life.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// The segment ends before a whole header.
    #[error("the segment ends inside a frame header")]
    ShortHeader,
    /// The header is all zeros: space that was never written in any life.
    #[error("zeroed space")]
    Zeros,
    /// The frame claims a body longer than what is left of the segment.
    #[error("frame length {len} runs past the end of the segment")]
    TooLong {
        /// The claimed body length.
        len: u32,
    },
    /// The checksum does not match.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The stored CRC32C.
        stored: u32,
        /// The CRC32C of the bytes as they are.
        computed: u32,
    },
    /// A well-formed frame from another life of the (recycled) segment.
    #[error(
        "stale frame of an earlier life of the segment (life {found}, this life is {expected})"
    )]
    OtherLife {
        /// The life found in the frame.
        found: u64,
        /// This segment's life.
        expected: u64,
    },
}

/// A frame whose header and checksum are valid for this life; the body is not decoded yet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawFrame<'a> {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) body: &'a [u8],
    /// Size of the frame on disk, padding included.
    pub(crate) size: usize,
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Parses the frame that starts at `buf[0]`, for the segment life `seq`. `buf` runs to the
/// end of the segment (or of the bytes read).
pub(crate) fn parse_frame(buf: &[u8], seq: u64) -> Result<RawFrame<'_>, FrameError> {
    let Some(header) = buf.get(..HEADER) else {
        return Err(FrameError::ShortHeader);
    };
    if header.iter().all(|&b| b == 0) {
        return Err(FrameError::Zeros);
    }
    let len = u32_at(header, 4);
    let size = frame_len(len as usize);
    if size > buf.len() {
        return Err(FrameError::TooLong { len });
    }
    let stored = u32_at(header, 0);
    let computed = crc32c::crc32c(&buf[4..HEADER + len as usize]);
    if stored != computed && !bug!(SkipChecksum) {
        return Err(FrameError::Checksum { stored, computed });
    }
    let found = u64_at(header, 8);
    if found != seq {
        return Err(FrameError::OtherLife {
            found,
            expected: seq,
        });
    }
    Ok(RawFrame {
        kind: header[16],
        flags: header[17],
        body: &buf[HEADER..HEADER + len as usize],
        size,
    })
}

/// A decoded frame body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// The first frame of a segment's life.
    SegmentStart {
        /// Where the log ended in the previous segment (bytes), 0 if there was none.
        prev_end: u64,
        /// The size the segment file was given (a shorter file was truncated).
        seg_len: u64,
    },
    /// A log entry.
    Entry(Entry),
    /// A hard state.
    HardState(HardState),
    /// The end of the log (overwritten by the next batch).
    End,
}

fn need(body: &[u8], len: usize, what: &str) -> Result<(), String> {
    if body.len() < len {
        Err(format!(
            "{what} body of {} bytes is shorter than {len}",
            body.len()
        ))
    } else {
        Ok(())
    }
}

/// Decodes a frame body. A valid checksum with an undecodable body means the record was
/// written by another format version or is damaged beyond what a CRC catches.
pub(crate) fn decode(frame: &RawFrame<'_>) -> Result<Record, String> {
    let body = frame.body;
    match frame.kind {
        KIND_SEGMENT_START => {
            need(body, 16, "segment start")?;
            Ok(Record::SegmentStart {
                prev_end: u64_at(body, 0),
                seg_len: u64_at(body, 8),
            })
        }
        KIND_ENTRY => decode_entry(body).map(Record::Entry),
        KIND_HARD_STATE => {
            need(body, HARD_STATE_BODY, "hard state")?;
            let vote = u64_at(body, 8);
            Ok(Record::HardState(HardState {
                term: u64_at(body, 0),
                vote: (vote != 0).then_some(vote),
                commit: u64_at(body, 16),
            }))
        }
        KIND_END => Ok(Record::End),
        other => Err(format!("unknown record kind {other}")),
    }
}

/// Decodes an entry body.
pub(crate) fn decode_entry(body: &[u8]) -> Result<Entry, String> {
    need(body, ENTRY_HEAD, "entry")?;
    let term = u64_at(body, 0);
    let index = u64_at(body, 8);
    let payload = &body[ENTRY_HEAD..];
    let payload = match body[16] {
        PAYLOAD_BLANK if payload.is_empty() => EntryPayload::Blank,
        PAYLOAD_BLANK => return Err("a blank entry with a payload".into()),
        PAYLOAD_NORMAL => EntryPayload::Normal(Bytes::copy_from_slice(payload)),
        PAYLOAD_MEMBERSHIP => {
            let entry = codec::decode_entry(payload, index).map_err(|e| e.0)?;
            if entry.term != term {
                return Err(format!(
                    "membership record of term {} inside an entry of term {term}",
                    entry.term
                ));
            }
            entry.payload
        }
        other => return Err(format!("unknown payload kind {other}")),
    };
    Ok(Entry::new(term, index, payload))
}

/// An entry prepared for encoding: its body length is known before the batch is laid out.
pub(crate) struct PreparedEntry<'a> {
    entry: &'a Entry,
    /// The codec record of a membership entry (encoded once, up front).
    membership: Option<Vec<u8>>,
}

impl<'a> PreparedEntry<'a> {
    pub(crate) fn new(entry: &'a Entry) -> Self {
        let membership = match &entry.payload {
            EntryPayload::Membership(_) => Some(codec::encode_entry(entry)),
            _ => None,
        };
        PreparedEntry { entry, membership }
    }

    pub(crate) fn body_len(&self) -> usize {
        ENTRY_HEAD
            + match (&self.entry.payload, &self.membership) {
                (_, Some(record)) => record.len(),
                (EntryPayload::Normal(data), None) => data.len(),
                _ => 0,
            }
    }
}

/// Lays out frames of one segment life into a buffer.
pub(crate) struct Encoder {
    buf: Vec<u8>,
    seq: u64,
}

impl Encoder {
    pub(crate) fn new(seq: u64, capacity: usize) -> Self {
        Encoder {
            buf: Vec::with_capacity(capacity),
            seq,
        }
    }

    /// Bytes laid out so far.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    fn frame(&mut self, kind: u8, flags: u8, body_len: usize, body: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&(body_len as u32).to_le_bytes());
        self.buf.extend_from_slice(&self.seq.to_le_bytes());
        self.buf.extend_from_slice(&[kind, flags, 0, 0, 0, 0, 0, 0]);
        body(&mut self.buf);
        debug_assert_eq!(self.buf.len(), start + HEADER + body_len);
        let crc = crc32c::crc32c(&self.buf[start + 4..]);
        self.buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        self.buf.resize(start + frame_len(body_len), 0);
    }

    pub(crate) fn segment_start(&mut self, prev_end: u64, seg_len: u64) {
        self.frame(KIND_SEGMENT_START, FLAG_COMMIT, 16, |b| {
            b.extend_from_slice(&prev_end.to_le_bytes());
            b.extend_from_slice(&seg_len.to_le_bytes());
        });
    }

    pub(crate) fn hard_state(&mut self, hs: &HardState, commit: bool) {
        let flags = if commit { FLAG_COMMIT } else { 0 };
        self.frame(KIND_HARD_STATE, flags, HARD_STATE_BODY, |b| {
            b.extend_from_slice(&hs.term.to_le_bytes());
            b.extend_from_slice(&hs.vote.unwrap_or(0).to_le_bytes());
            b.extend_from_slice(&hs.commit.to_le_bytes());
        });
    }

    /// Appends an entry frame; returns its offset within the buffer and its size.
    pub(crate) fn entry(&mut self, prepared: &PreparedEntry<'_>, commit: bool) -> (usize, usize) {
        let start = self.buf.len();
        let flags = if commit { FLAG_COMMIT } else { 0 };
        let entry = prepared.entry;
        self.frame(KIND_ENTRY, flags, prepared.body_len(), |b| {
            b.extend_from_slice(&entry.term.to_le_bytes());
            b.extend_from_slice(&entry.index.to_le_bytes());
            match (&entry.payload, &prepared.membership) {
                (_, Some(record)) => {
                    b.push(PAYLOAD_MEMBERSHIP);
                    b.extend_from_slice(record);
                }
                (EntryPayload::Normal(data), None) => {
                    b.push(PAYLOAD_NORMAL);
                    b.extend_from_slice(data);
                }
                _ => b.push(PAYLOAD_BLANK),
            }
        });
        (start, self.buf.len() - start)
    }

    /// Appends the `END` frame and returns the whole buffer.
    pub(crate) fn finish_with_end(mut self) -> Vec<u8> {
        self.frame(KIND_END, 0, 0, |_| {});
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_core::Membership;

    fn entries() -> Vec<Entry> {
        vec![
            Entry::new(1, 1, EntryPayload::Blank),
            Entry::new(2, 2, EntryPayload::Normal(Bytes::from_static(b"hello"))),
            Entry::new(
                3,
                3,
                EntryPayload::Membership(Membership::new([1, 2]).with_address(2, "h:1")),
            ),
        ]
    }

    fn frames(buf: &[u8], seq: u64) -> Vec<Record> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Ok(frame) = parse_frame(&buf[pos..], seq) {
            out.push(decode(&frame).unwrap());
            pos += frame.size;
        }
        out
    }

    #[test]
    fn frames_round_trip_and_every_bit_flip_is_caught() {
        let hs = HardState {
            term: 3,
            vote: Some(2),
            commit: 1,
        };
        let list = entries();
        let mut enc = Encoder::new(7, 0);
        enc.segment_start(4096, 8192);
        enc.hard_state(&hs, false);
        for (i, e) in list.iter().enumerate() {
            enc.entry(&PreparedEntry::new(e), i + 1 == list.len());
        }
        let buf = enc.finish_with_end();
        assert_eq!(buf.len() % ALIGN, 0);
        let mut expected = vec![
            Record::SegmentStart {
                prev_end: 4096,
                seg_len: 8192,
            },
            Record::HardState(hs),
        ];
        expected.extend(list.iter().cloned().map(Record::Entry));
        expected.push(Record::End);
        assert_eq!(frames(&buf, 7), expected);
        // Another life does not read these frames.
        assert!(matches!(
            parse_frame(&buf, 8),
            Err(FrameError::OtherLife { found: 7, .. })
        ));
        // Every single bit flip in the first entry frame is detected.
        let start = frame_len(16) + frame_len(24);
        let size = frame_len(ENTRY_HEAD);
        for bit in 0..(HEADER + ENTRY_HEAD) * 8 {
            let mut bad = buf.clone();
            bad[start + bit / 8] ^= 1 << (bit % 8);
            let parsed = parse_frame(&bad[start..], 7);
            assert!(
                parsed.is_err() || parsed.is_ok_and(|f| f.size != size),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn zeros_short_and_long_frames_are_refused() {
        assert_eq!(
            parse_frame(&[0; 10], 1).err(),
            Some(FrameError::ShortHeader)
        );
        assert_eq!(parse_frame(&[0; 64], 1).err(), Some(FrameError::Zeros));
        let mut enc = Encoder::new(1, 0);
        enc.entry(&PreparedEntry::new(&entries()[1]), true);
        let buf = enc.finish_with_end();
        assert!(matches!(
            parse_frame(&buf[..HEADER + 4], 1),
            Err(FrameError::TooLong { .. })
        ));
    }
}
