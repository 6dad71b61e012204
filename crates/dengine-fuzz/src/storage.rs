//! Targets `wal_recovery`, `redb_recovery`, `sled_recovery` and `record_codec`: what a log
//! store finds on disk after damage, and the record codec over arbitrary bytes.
//!
//! A recovery input writes a small log (batches of entries, a hard state), damages the store's
//! files (flips, overwrites, truncations, appended junk, removed files) and opens it again.
//! Oracle: opening either fails with an error that says something, or succeeds with a log
//! whose every entry in `first..=last` reads back with consecutive indexes, or fails to read
//! with an error — never a panic or a hang; an undamaged store holds exactly what was written.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use dengine_core::{
    Entry, EntryId, EntryPayload, HardState, LogReader, LogStore, PersistRequest, StorageError,
};
use dengine_sim::fuzz::Input;
use dengine_storage_common::codec;
use dengine_storage_redb::RedbStore;
use dengine_storage_sled::SledStore;
use dengine_storage_wal::{WalOptions, WalStore};

use crate::support::runtime;

type Opener<S> = fn(&Path) -> Result<S, StorageError>;

/// WAL segments small enough that a few entries span several.
fn wal_options() -> WalOptions {
    WalOptions::default().segment_bytes(4096)
}

/// Target `wal_recovery`.
pub fn wal_recovery(data: &[u8]) {
    recovery::<WalStore>(
        data,
        |d| WalStore::open_or_create_with(d, wal_options()),
        |d| WalStore::open_with(d, wal_options()),
    );
}

/// Target `redb_recovery`.
pub fn redb_recovery(data: &[u8]) {
    recovery::<RedbStore>(
        data,
        |d| RedbStore::open_or_create(d),
        |d| RedbStore::open(d),
    );
}

/// Target `sled_recovery`.
pub fn sled_recovery(data: &[u8]) {
    recovery::<SledStore>(
        data,
        |d| SledStore::open_or_create(d),
        |d| SledStore::open(d),
    );
}

fn recovery<S: LogStore>(data: &[u8], create: Opener<S>, open: Opener<S>) {
    let_caught_panics_unwind();
    let mut input = Input::new(data);
    let scratch = crate::support::scratch_dir();
    let dir = scratch.path().join("log");
    let rt = runtime();
    let _context = rt.enter();
    // 1. Write: up to 8 batches of up to 8 entries, then a hard state.
    let store = match create(&dir) {
        Ok(s) => s,
        Err(e) => panic!("cannot create a store in {}: {e}", dir.display()),
    };
    let mut next = 1u64;
    let batches = input.below(8) + 1;
    for _ in 0..batches {
        let count = input.below(8) + 1;
        let size = input.below(200) as usize;
        let entries: Vec<Entry> = (0..count)
            .map(|i| {
                let payload = Bytes::from(vec![(next + i) as u8; size]);
                Entry::new(1, next + i, EntryPayload::Normal(payload))
            })
            .collect();
        next += count;
        let write = PersistRequest::new(None, entries, true);
        if let Err(e) = rt.block_on(store.persist(&write)) {
            panic!("writing an undamaged store failed: {e}");
        }
    }
    let last = next - 1;
    let hard = HardState {
        term: 1,
        vote: Some(2),
        commit: last / 2,
    };
    if let Err(e) = rt.block_on(store.persist(&PersistRequest::new(Some(hard), Vec::new(), true))) {
        panic!("writing the hard state failed: {e}");
    }
    drop(store);
    // 2. Damage.
    let damages = input.below(4);
    for _ in 0..damages {
        damage(&dir, &mut input);
    }
    // 3. Reopen and read everything.
    let store = match open(&dir) {
        Ok(s) => s,
        Err(e) => {
            assert!(damages > 0, "an undamaged store does not open: {e}");
            assert!(!e.to_string().is_empty(), "an error without a message");
            return;
        }
    };
    let state = match rt.block_on(store.load_state()) {
        Ok(s) => s,
        Err(e) => {
            assert!(damages > 0, "an undamaged store's state does not load: {e}");
            return;
        }
    };
    let reader = store.reader();
    let (first, end) = (reader.first_index(), reader.last_index());
    assert!(
        first <= end + 1,
        "first index {first} is past last {end} + 1"
    );
    let count = (end + 1).saturating_sub(first);
    assert!(
        count <= last,
        "the store claims {count} entries after writing {last}"
    );
    let mut out = Vec::new();
    match reader.entries(first, end + 1, u64::MAX, &mut out) {
        Ok(()) => {
            for (i, e) in out.iter().enumerate() {
                assert_eq!(e.index, first + i as u64, "entries out of order: {out:?}");
            }
            if damages == 0 {
                assert_eq!((first, end), (1, last), "an undamaged store lost entries");
                assert_eq!(out.len() as u64, last);
                assert_eq!(
                    state.hard_state, hard,
                    "an undamaged store lost its hard state"
                );
                for e in &out {
                    assert_eq!(e.id(), EntryId::new(1, e.index));
                }
            }
        }
        Err(e) => assert!(damages > 0, "an undamaged store cannot read its log: {e}"),
    }
}

/// libFuzzer's panic hook aborts on every panic, even one the code under test catches; the
/// stores catch a panic inside redb or sled on purpose and return a `StorageError` (redb 4.6
/// reaches `unreachable!()` on some damaged table trees: the first finding of
/// `redb_recovery`). Rust's default hook in its place lets such a panic unwind to the store's
/// `catch_unwind`; a panic that escapes the target is still a finding (libfuzzer-sys aborts on
/// it).
fn let_caught_panics_unwind() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| drop(std::panic::take_hook()));
}

/// Every file under `dir`, sorted (so that one input always damages the same file).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(items) = fs::read_dir(&d) else {
            continue;
        };
        for item in items.flatten() {
            let path = item.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn damage(dir: &Path, input: &mut Input<'_>) {
    let files = files(dir);
    if files.is_empty() {
        return;
    }
    let path = &files[input.below(files.len() as u64) as usize];
    let Ok(mut bytes) = fs::read(path) else {
        return;
    };
    let at = if bytes.is_empty() {
        0
    } else {
        usize::from(input.u16()) % bytes.len()
    };
    match input.below(5) {
        0 => {
            if let Some(b) = bytes.get_mut(at) {
                *b ^= 1 << input.below(8);
            }
        }
        1 => {
            let len = input.below(16) as usize;
            for (i, &b) in input.bytes(len).iter().enumerate() {
                if let Some(x) = bytes.get_mut(at + i) {
                    *x = b;
                }
            }
        }
        2 => bytes.truncate(at),
        3 => {
            let len = input.below(64) as usize;
            bytes.extend_from_slice(input.bytes(len));
        }
        _ => {
            let _ = fs::remove_file(path);
            return;
        }
    }
    let _ = fs::write(path, bytes);
}

/// Target `record_codec`: the entry, hard state and entry id records that redb and sled
/// store, decoded from arbitrary bytes. Whatever decodes must encode to a record that decodes
/// to the same value.
pub fn record_codec(data: &[u8]) {
    let mut input = Input::new(data);
    let index = input.u64();
    let record = input.rest();
    if let Ok(e) = codec::decode_entry(record, index) {
        assert_eq!(e.index, index, "decoded an entry at another index");
        match codec::decode_entry(&codec::encode_entry(&e), index) {
            Ok(back) => assert_eq!(back, e),
            Err(err) => panic!("a decoded entry does not decode again: {err}"),
        }
    }
    if let Ok(h) = codec::decode_hard_state(record) {
        match codec::decode_hard_state(&codec::encode_hard_state(&h)) {
            Ok(back) => assert_eq!(back, h),
            Err(err) => panic!("a decoded hard state does not decode again: {err}"),
        }
    }
    if let Ok(id) = codec::decode_entry_id(record) {
        match codec::decode_entry_id(&codec::encode_entry_id(id)) {
            Ok(back) => assert_eq!(back, id),
            Err(err) => panic!("a decoded entry id does not decode again: {err}"),
        }
    }
}

/// Seeds for the recovery targets: a log written and left alone, one damaged in each way.
pub fn recovery_seeds() -> Vec<Vec<u8>> {
    vec![
        vec![3, 4, 50, 2, 120, 7, 10, 0],
        vec![3, 4, 50, 2, 120, 7, 10, 1, 0, 0, 1, 0, 3],
        vec![1, 7, 20, 1, 0, 10, 0, 2, 2],
        vec![
            2, 3, 100, 3, 100, 1, 1, 40, 0, 3, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
        ],
        vec![5, 1, 10, 1, 10, 1, 10, 1, 10, 1, 10, 1, 3, 4, 0],
    ]
}

/// Seeds for `record_codec`: each kind of record, as the codec writes it.
pub fn codec_seeds() -> Vec<Vec<u8>> {
    let index = 42u64;
    let with_index = |record: Vec<u8>| {
        let mut out = index.to_le_bytes().to_vec();
        out.extend(record);
        out
    };
    vec![
        with_index(codec::encode_entry(&Entry::new(
            3,
            index,
            EntryPayload::Normal(Bytes::from_static(b"value")),
        ))),
        with_index(codec::encode_entry(&Entry::new(
            3,
            index,
            EntryPayload::Blank,
        ))),
        with_index(codec::encode_entry(&Entry::new(
            3,
            index,
            EntryPayload::Membership(dengine_core::Membership::new([1, 2, 3])),
        ))),
        with_index(codec::encode_hard_state(&HardState {
            term: 3,
            vote: Some(1),
            commit: 40,
        })),
        with_index(codec::encode_entry_id(EntryId::new(3, index))),
    ]
}
