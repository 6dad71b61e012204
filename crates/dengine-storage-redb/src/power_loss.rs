//! The power-loss test for redb: [`RedbLog`] on a `redb::StorageBackend` that models the page
//! cache. Writes land in the cache; `sync_data` makes everything written so far durable. When
//! the power fails, the disk keeps what was synced plus a random prefix of the later writes,
//! the last of them torn at a random byte (the page cache writes back in no promised order;
//! a prefix is the order a disk that honours its queue would give). After recovery the log
//! must open without an error and hold exactly the state after some operation that was
//! issued, no earlier than the last one reported durable: nothing synced is lost, nothing is
//! invented, nothing is corrupt. With the backend's sync switched off, the same check must
//! fail (so it can).
//!
//! SIGKILL tests keep the page cache and cannot see a store that forgets to sync; this one can.
//! One seed decides a run; `REDB_POWER_SEEDS=N` runs N seeds instead of 60.

use std::sync::Arc;

use dengine_core::{Entry, EntryPayload, HardState, PersistRequest};
use dengine_storage_common::testing::Rng;
use parking_lot::Mutex;
use redb::StorageBackend;

use super::*;

#[derive(Clone, Debug)]
enum Write {
    At(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Platter {
    /// What survives a power loss for certain.
    durable: Vec<u8>,
    /// What reads see: the durable bytes with every later write applied.
    cache: Vec<u8>,
    /// Writes since the last sync, in order.
    unsynced: Vec<Write>,
    /// False: `sync_data` reports success and does nothing (the store's sync "disabled").
    sync_works: bool,
}

fn apply(bytes: &mut Vec<u8>, write: &Write) {
    match write {
        Write::At(offset, data) => {
            let end = *offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*offset as usize..end].copy_from_slice(data);
        }
        Write::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

/// The page-cache model, shared with the test through clones.
#[derive(Clone, Debug)]
struct PageCache(Arc<Mutex<Platter>>);

impl PageCache {
    fn new(bytes: Vec<u8>, sync_works: bool) -> PageCache {
        PageCache(Arc::new(Mutex::new(Platter {
            durable: bytes.clone(),
            cache: bytes,
            unsynced: Vec::new(),
            sync_works,
        })))
    }

    /// The disk after a power loss now.
    fn power_loss(&self, rng: &mut Rng) -> Vec<u8> {
        let p = self.0.lock();
        let mut disk = p.durable.clone();
        let kept = rng.below(p.unsynced.len() as u64 + 1) as usize;
        for (i, write) in p.unsynced[..kept].iter().enumerate() {
            match write {
                Write::At(offset, data) if i + 1 == kept && !data.is_empty() => {
                    let torn = rng.below(data.len() as u64 + 1) as usize;
                    apply(&mut disk, &Write::At(*offset, data[..torn].to_vec()));
                }
                other => apply(&mut disk, other),
            }
        }
        disk
    }
}

impl StorageBackend for PageCache {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.lock().cache.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let p = self.0.lock();
        let end = offset as usize + out.len();
        let Some(bytes) = p.cache.get(offset as usize..end) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the simulated file",
            ));
        };
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut p = self.0.lock();
        let write = Write::SetLen(len);
        apply(&mut p.cache, &write);
        p.unsynced.push(write);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut p = self.0.lock();
        if p.sync_works {
            p.durable = p.cache.clone();
            p.unsynced.clear();
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut p = self.0.lock();
        let write = Write::At(offset, data.to_vec());
        apply(&mut p.cache, &write);
        p.unsynced.push(write);
        Ok(())
    }
}

/// What the log holds, as the `LogStore` contract sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Model {
    hard_state: HardState,
    compacted: EntryId,
    /// (index, term) of every entry.
    entries: Vec<(LogIndex, Term)>,
}

fn observe(log: &RedbLog) -> Result<Model, StorageError> {
    let state = log.load_state()?;
    let compacted_index = state.first_index - 1;
    let entries = log.read(state.first_index..state.last_index + 1, u64::MAX)?;
    Ok(Model {
        hard_state: state.hard_state,
        compacted: EntryId::new(log.term(compacted_index)?, compacted_index),
        entries: entries.iter().map(|e| (e.index, e.term)).collect(),
    })
}

fn open(backend: PageCache) -> Result<RedbLog, StorageError> {
    let file = PathBuf::from("power-loss.redb");
    let db = Database::builder()
        .create_with_backend(backend)
        .map_err(engine_error(&file, "opening"))?;
    RedbLog::with_database(db, file)
}

/// One run: random operations, a power loss at a random moment, recovery, the check. The
/// error describes a violation.
fn run(seed: u64, sync_works: bool) -> Result<(), String> {
    let mut rng = Rng(seed);
    let backend = PageCache::new(Vec::new(), sync_works);
    let log = open(backend.clone()).map_err(|e| e.to_string())?;
    // The state after every operation issued so far, and the newest one reported durable.
    let mut states = vec![observe(&log).map_err(|e| e.to_string())?];
    let mut durable = 0;
    let mut term = 1;
    let ops = 1 + rng.below(40);
    for _ in 0..ops {
        let now = states[states.len() - 1].clone();
        let last = now.compacted.index + now.entries.len() as u64;
        if rng.below(8) == 0 && last > now.compacted.index {
            let up_to = now.compacted.index + 1 + rng.below(last - now.compacted.index);
            log.purge(up_to).map_err(|e| e.to_string())?;
            durable = states.len();
        } else {
            if rng.below(4) == 0 {
                term += 1;
            }
            // Append after the end, or overwrite a suffix (a conflict).
            let first = if rng.below(3) == 0 && last > now.compacted.index {
                now.compacted.index + 1 + rng.below(last - now.compacted.index)
            } else {
                last + 1
            };
            let entries: Vec<Entry> = (first..first + 1 + rng.below(5))
                .map(|i| {
                    let payload = vec![i as u8; rng.below(3000) as usize];
                    Entry::new(term, i, EntryPayload::Normal(payload.into()))
                })
                .collect();
            let hard_state = HardState {
                term,
                vote: Some(1),
                commit: now.hard_state.commit,
            };
            let must_sync = rng.below(4) != 0;
            log.persist(&PersistRequest::new(Some(hard_state), entries, must_sync))
                .map_err(|e| e.to_string())?;
            if must_sync {
                durable = states.len();
            }
        }
        states.push(observe(&log).map_err(|e| e.to_string())?);
    }
    let disk = backend.power_loss(&mut rng);
    // The process is gone: redb's closing writes must not reach the disk we recover from.
    std::mem::forget(log);
    let recovered = open(PageCache::new(disk, true))
        .and_then(|log| observe(&log))
        .map_err(|e| format!("seed {seed:#x}: recovery failed: {e}"))?;
    if states[durable..].contains(&recovered) {
        return Ok(());
    }
    let matches = states.iter().position(|s| *s == recovered);
    Err(format!(
        "seed {seed:#x}: after the power loss the log holds {recovered:?}, which is {} (the \
         state after operation {durable} was reported durable, of {} operations)",
        match matches {
            Some(i) => format!("the state after operation {i}: synced data was lost"),
            None => "no state the operations produced".into(),
        },
        states.len() - 1
    ))
}

fn seeds() -> u64 {
    std::env::var("REDB_POWER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

#[test]
fn after_a_power_loss_the_log_holds_everything_synced_and_nothing_corrupt() {
    for seed in 0..seeds() {
        if let Err(e) = run(0xD15C_0000 + seed, true) {
            panic!("{e}");
        }
    }
}

#[test]
fn the_check_fails_when_the_backend_does_not_sync() {
    let caught = (0..seeds()).find_map(|seed| run(0xD15C_0000 + seed, false).err());
    assert!(
        caught.is_some(),
        "with sync_data doing nothing, no power loss lost synced data"
    );
}
