//! A versioned, checksummed byte encoding for what a [`LogStore`](dengine_core::LogStore)
//! keeps on disk, shared by the database backends (and the runtime's snapshot files) so that
//! they agree on it and so that a new backend does not have to invent one.
//!
//! Every record is `version (u8) | body | crc32 (u32, big-endian)`, the CRC-32 (IEEE, via
//! `crc32fast`) covering the version and the body. All integers are big-endian. An entry's body
//! is `kind (u8) | term (u64) | index (u64) | payload`; carrying the index inside the record
//! lets a reader detect a record stored under the wrong key, not only a flipped bit.
//!
//! Pure functions only: the backends do the I/O.

use std::path::Path;

use bytes::Bytes;
use dengine_core::{
    Entry, EntryId, EntryPayload, HardState, LogIndex, Membership, NodeId, SnapshotMeta,
    StorageError,
};

/// Version byte at the start of every record this module writes. Version 3 added
/// [`Membership::highest_id`] after the addresses of a membership; version-2 records are still
/// read (their highest id is the largest member id).
pub const RECORD_VERSION: u8 = 3;

/// The oldest record version this module reads.
const OLDEST_READABLE_VERSION: u8 = 2;

/// Name of the marker file that every directory-based backend writes next to its data.
pub const MARKER_FILE: &str = "DENGINE_STORE";

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// Why a record could not be decoded; the backend adds the file and the index with
/// [`in_entry`](Self::in_entry) or [`in_record`](Self::in_record).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

impl CodecError {
    /// The entry at `index`, stored in `path`, is damaged: [`StorageError::Corrupt`].
    pub fn in_entry(self, path: &Path, index: LogIndex) -> StorageError {
        StorageError::Corrupt {
            path: path.to_path_buf(),
            index,
            detail: self.0,
        }
    }

    /// The metadata record `record`, stored in `path`, is damaged:
    /// [`StorageError::CorruptMetadata`].
    pub fn in_record(self, path: &Path, record: &'static str) -> StorageError {
        StorageError::CorruptMetadata {
            path: path.to_path_buf(),
            record,
            detail: self.0,
        }
    }
}

/// The key of the entry at `index`: big-endian, so byte order is log order.
pub fn index_key(index: LogIndex) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index in a key made by [`index_key`], or `None` if the key is not 8 bytes long.
pub fn key_index(key: &[u8]) -> Option<LogIndex> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn seal(mut buf: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_be_bytes());
    buf
}

/// Checks the version and the checksum and returns the version and the body.
fn open(record: &[u8]) -> Result<(u8, &[u8]), CodecError> {
    if record.len() < 5 {
        return Err(CodecError(format!(
            "record is {} bytes, shorter than its header and checksum",
            record.len()
        )));
    }
    let (data, crc) = record.split_at(record.len() - 4);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = crc32fast::hash(data);
    if stored != actual {
        return Err(CodecError(format!(
            "checksum mismatch: stored {stored:#010x}, computed {actual:#010x} over {} bytes",
            data.len()
        )));
    }
    if !(OLDEST_READABLE_VERSION..=RECORD_VERSION).contains(&data[0]) {
        return Err(CodecError(format!(
            "record version {} is not one of the supported versions \
             {OLDEST_READABLE_VERSION}..={RECORD_VERSION}",
            data[0]
        )));
    }
    Ok((data[0], &data[1..]))
}

/// A cursor over a record body that fails with a message instead of panicking.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u64(&mut self, what: &str) -> Result<u64, CodecError> {
        let Some((head, rest)) = self.0.split_first_chunk::<8>() else {
            return Err(CodecError(format!("record ends inside the {what} field")));
        };
        self.0 = rest;
        Ok(u64::from_be_bytes(*head))
    }

    fn u32(&mut self, what: &str) -> Result<u32, CodecError> {
        let Some((head, rest)) = self.0.split_first_chunk::<4>() else {
            return Err(CodecError(format!("record ends inside the {what} field")));
        };
        self.0 = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&[u8], CodecError> {
        if self.0.len() < len {
            return Err(CodecError(format!(
                "{what} of {len} bytes exceeds the record length"
            )));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, CodecError> {
        let Some((head, rest)) = self.0.split_first() else {
            return Err(CodecError(format!("record ends inside the {what} field")));
        };
        self.0 = rest;
        Ok(*head)
    }

    fn ids(&mut self, what: &str) -> Result<Vec<NodeId>, CodecError> {
        let count = self.u32(what)? as usize;
        // Check the length before allocating: a corrupt count must not allocate gigabytes.
        if self.0.len() < count.saturating_mul(8) {
            return Err(CodecError(format!(
                "{what} count {count} exceeds the record length"
            )));
        }
        (0..count).map(|_| self.u64(what)).collect()
    }

    fn finish(&self, what: &str) -> Result<(), CodecError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(CodecError(format!(
                "{} unexpected bytes after the {what}",
                self.0.len()
            )))
        }
    }
}

fn put_membership(buf: &mut Vec<u8>, m: &Membership) {
    for set in [&m.voters, &m.voters_outgoing, &m.learners] {
        buf.extend_from_slice(&(set.len() as u32).to_be_bytes());
        for id in set {
            buf.extend_from_slice(&id.to_be_bytes());
        }
    }
    buf.extend_from_slice(&(m.addresses.len() as u32).to_be_bytes());
    for (id, address) in &m.addresses {
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(&(address.len() as u32).to_be_bytes());
        buf.extend_from_slice(address.as_bytes());
    }
    buf.extend_from_slice(&m.highest_id.to_be_bytes());
}

fn get_membership(cur: &mut Cursor<'_>, version: u8) -> Result<Membership, CodecError> {
    let voters = cur.ids("voters")?;
    let voters_outgoing = cur.ids("outgoing voters")?;
    let learners = cur.ids("learners")?;
    let count = cur.u32("address count")?;
    let mut addresses = std::collections::BTreeMap::new();
    for _ in 0..count {
        let id = cur.u64("address node id")?;
        let len = cur.u32("address length")? as usize;
        let bytes = cur.take(len, "address")?;
        let address = String::from_utf8(bytes.to_vec())
            .map_err(|_| CodecError(format!("the address of node {id} is not UTF-8")))?;
        addresses.insert(id, address);
    }
    let mut m = Membership {
        voters: voters.into_iter().collect(),
        voters_outgoing: voters_outgoing.into_iter().collect(),
        learners: learners.into_iter().collect(),
        addresses,
        highest_id: 0,
    };
    let stored = if version >= 3 {
        cur.u64("highest node id")?
    } else {
        0
    };
    m.highest_id = stored.max(m.largest_member_id());
    Ok(m)
}

/// Encodes a log entry.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let payload_len = entry.payload_bytes() as usize;
    let mut buf = Vec::with_capacity(1 + 1 + 16 + payload_len + 4);
    buf.push(RECORD_VERSION);
    let kind = match &entry.payload {
        EntryPayload::Blank => KIND_BLANK,
        EntryPayload::Normal(_) => KIND_NORMAL,
        EntryPayload::Membership(_) => KIND_MEMBERSHIP,
    };
    buf.push(kind);
    buf.extend_from_slice(&entry.term.to_be_bytes());
    buf.extend_from_slice(&entry.index.to_be_bytes());
    match &entry.payload {
        EntryPayload::Blank => {}
        EntryPayload::Normal(data) => buf.extend_from_slice(data),
        EntryPayload::Membership(m) => put_membership(&mut buf, m),
    }
    seal(buf)
}

/// Decodes an entry stored under `expected_index`, verifying its checksum and that it really
/// is the entry for that index.
pub fn decode_entry(record: &[u8], expected_index: LogIndex) -> Result<Entry, CodecError> {
    let (version, body) = open(record)?;
    let mut cur = Cursor(body);
    let kind = cur.u8("kind")?;
    let term = cur.u64("term")?;
    let index = cur.u64("index")?;
    if index != expected_index {
        return Err(CodecError(format!(
            "record holds index {index}, but is stored under index {expected_index}"
        )));
    }
    let payload = match kind {
        KIND_BLANK => {
            cur.finish("blank entry")?;
            EntryPayload::Blank
        }
        KIND_NORMAL => EntryPayload::Normal(Bytes::copy_from_slice(cur.0)),
        KIND_MEMBERSHIP => {
            let m = get_membership(&mut cur, version)?;
            cur.finish("membership")?;
            EntryPayload::Membership(m)
        }
        other => return Err(CodecError(format!("unknown entry kind {other}"))),
    };
    Ok(Entry::new(term, index, payload))
}

/// Encodes a hard state (`vote` 0 stands for no vote; node id 0 is never valid).
pub fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    let mut buf = vec![RECORD_VERSION];
    buf.extend_from_slice(&hs.term.to_be_bytes());
    buf.extend_from_slice(&hs.vote.unwrap_or(0).to_be_bytes());
    buf.extend_from_slice(&hs.commit.to_be_bytes());
    seal(buf)
}

/// Decodes a hard state.
pub fn decode_hard_state(record: &[u8]) -> Result<HardState, CodecError> {
    let mut cur = Cursor(open(record)?.1);
    let term = cur.u64("term")?;
    let vote = cur.u64("vote")?;
    let commit = cur.u64("commit")?;
    cur.finish("hard state")?;
    Ok(HardState {
        term,
        vote: (vote != 0).then_some(vote),
        commit,
    })
}

/// Encodes an entry id (used for the compaction point).
pub fn encode_entry_id(id: EntryId) -> Vec<u8> {
    let mut buf = vec![RECORD_VERSION];
    buf.extend_from_slice(&id.term.to_be_bytes());
    buf.extend_from_slice(&id.index.to_be_bytes());
    seal(buf)
}

/// Decodes an entry id.
pub fn decode_entry_id(record: &[u8]) -> Result<EntryId, CodecError> {
    let mut cur = Cursor(open(record)?.1);
    let term = cur.u64("term")?;
    let index = cur.u64("index")?;
    cur.finish("entry id")?;
    Ok(EntryId::new(term, index))
}

/// Encodes a snapshot description.
pub fn encode_snapshot_meta(meta: &SnapshotMeta) -> Vec<u8> {
    let mut buf = vec![RECORD_VERSION];
    buf.extend_from_slice(&meta.last_included.term.to_be_bytes());
    buf.extend_from_slice(&meta.last_included.index.to_be_bytes());
    put_membership(&mut buf, &meta.membership);
    seal(buf)
}

/// Decodes a snapshot description.
pub fn decode_snapshot_meta(record: &[u8]) -> Result<SnapshotMeta, CodecError> {
    let (version, body) = open(record)?;
    let mut cur = Cursor(body);
    let term = cur.u64("term")?;
    let index = cur.u64("index")?;
    let membership = get_membership(&mut cur, version)?;
    cur.finish("snapshot meta")?;
    Ok(SnapshotMeta {
        last_included: EntryId::new(term, index),
        membership,
    })
}

/// The identity of a store directory: which backend wrote it, in which format version.
/// Stored as text in [`MARKER_FILE`] so that an operator can read it with `cat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// Backend name, e.g. `"redb"`.
    pub backend: String,
    /// The backend's on-disk format version.
    pub format: u32,
}

impl Marker {
    /// The marker file's contents.
    pub fn to_text(&self) -> String {
        format!(
            "dengine-store\nbackend = {}\nformat = {}\n",
            self.backend, self.format
        )
    }

    /// Parses a marker file's contents.
    pub fn parse(text: &str) -> Result<Marker, CodecError> {
        let mut lines = text.lines();
        if lines.next() != Some("dengine-store") {
            return Err(CodecError(
                "the marker does not start with the line \"dengine-store\"".into(),
            ));
        }
        let mut backend = None;
        let mut format = None;
        for line in lines.filter(|l| !l.trim().is_empty()) {
            match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("backend", v)) => backend = Some(v.to_string()),
                Some(("format", v)) => {
                    format =
                        Some(v.parse().map_err(|_| {
                            CodecError(format!("format version {v:?} is not a number"))
                        })?)
                }
                _ => return Err(CodecError(format!("unexpected marker line {line:?}"))),
            }
        }
        match (backend, format) {
            (Some(backend), Some(format)) => Ok(Marker { backend, format }),
            _ => Err(CodecError(
                "the marker lacks a backend or format line".into(),
            )),
        }
    }
}

impl std::fmt::Display for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} format {}", self.backend, self.format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_detect_every_single_bit_flip() {
        let entries = [
            Entry::new(3, 7, EntryPayload::Blank),
            Entry::new(3, 8, EntryPayload::Normal(Bytes::from_static(b"hello"))),
            Entry::new(
                4,
                9,
                EntryPayload::Membership(Membership::new([1, 2, 3]).with_learners([9])),
            ),
            Entry::new(
                4,
                10,
                EntryPayload::Membership(Membership {
                    voters_outgoing: [1, 2, 5].into_iter().collect(),
                    highest_id: 6,
                    ..Membership::new([1, 2, 3]).with_address(5, "10.0.0.5:7000")
                }),
            ),
        ];
        for entry in &entries {
            let record = encode_entry(entry);
            assert_eq!(decode_entry(&record, entry.index).as_ref(), Ok(entry));
            assert!(decode_entry(&record, entry.index + 1).is_err());
            for bit in 0..record.len() * 8 {
                let mut bad = record.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(decode_entry(&bad, entry.index).is_err(), "bit {bit}");
            }
            for len in 0..record.len() {
                assert!(decode_entry(&record[..len], entry.index).is_err());
            }
        }
        let hs = HardState {
            term: 5,
            vote: Some(2),
            commit: 4,
        };
        assert_eq!(decode_hard_state(&encode_hard_state(&hs)), Ok(hs));
        let hs = HardState::default();
        assert_eq!(decode_hard_state(&encode_hard_state(&hs)), Ok(hs));
        let id = EntryId::new(2, 10);
        assert_eq!(decode_entry_id(&encode_entry_id(id)), Ok(id));
        let meta = SnapshotMeta {
            last_included: id,
            membership: Membership::new([1]).with_address(1, "node-1:7000"),
        };
        assert_eq!(decode_snapshot_meta(&encode_snapshot_meta(&meta)), Ok(meta));
    }

    #[test]
    fn version_2_memberships_are_read_with_their_largest_member_as_highest_id() {
        let mut m = Membership::new([1, 2, 7]).with_address(7, "h:1");
        m.highest_id = 9; // what a v3 record would keep and a v2 record cannot
        let v3 = encode_entry(&Entry::new(1, 1, EntryPayload::Membership(m.clone())));
        // The same record as version 2 wrote it: no highest id before the checksum.
        let mut v2 = v3[..v3.len() - 4 - 8].to_vec();
        v2[0] = 2;
        let v2 = seal(v2);
        let Ok(Entry {
            payload: EntryPayload::Membership(read),
            ..
        }) = decode_entry(&v2, 1)
        else {
            panic!("a version-2 record must decode");
        };
        assert_eq!(read.highest_id, 7);
        assert_eq!(read.voters, m.voters);
        let mut v1 = v2.clone();
        v1[0] = 1;
        assert!(decode_entry(&seal(v1[..v1.len() - 4].to_vec()), 1).is_err());
    }

    #[test]
    fn markers_round_trip_and_reject_garbage() {
        let m = Marker {
            backend: "redb".into(),
            format: 1,
        };
        assert_eq!(Marker::parse(&m.to_text()), Ok(m));
        assert!(Marker::parse("").is_err());
        assert!(Marker::parse("dengine-store\nbackend = x\n").is_err());
        assert!(Marker::parse("dengine-store\nbackend = x\nformat = one\n").is_err());
        assert_eq!(key_index(&index_key(42)), Some(42));
        assert_eq!(key_index(b"short"), None);
    }
}
