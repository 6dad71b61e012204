//! [`SimDisk`]: the log store of a simulated host. What a node writes is visible at once and
//! durable only once a sync covering it completes, after a latency on the host's own clock; a
//! crash keeps the synced writes and, of the others, only a prefix (what happened to reach the
//! platter first). The disk can fail: a write or a sync answers an I/O error (after a failed
//! sync the unsynced writes are never made durable, as Linux drops dirty pages it could not
//! write back), it can be slow or stall, and, as a deliberate bug, its sync can lie.
//!
//! Writes are kept as operations, not bytes: this disk models ordering, durability and
//! failures, not the encoding. The byte-level faults (torn records, bit flips) are the
//! business of the file-level power-loss tests of the stores themselves.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dengine_core::store::MemoryStore;
use dengine_core::{
    Entry, LogIndex, LogReader, LogStore, PersistRequest, SnapshotMeta, StorageError, StoredState,
};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::rng::SimRng;

/// How a host's disk misbehaves. Chances are per write, per mille.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskFaults {
    /// Largest latency of one write, in milliseconds of the host's clock.
    pub max_latency_ms: u64,
    /// Chance that a write takes `stall_ms` instead (a stalling disk).
    pub stall_per_mille: u64,
    /// How long a stalled write takes.
    pub stall_ms: u64,
    /// Chance that a write fails with an I/O error before anything is written.
    pub write_error_per_mille: u64,
    /// Chance that a sync fails with an I/O error; the writes it covered stay visible until
    /// the next crash but never become durable.
    pub sync_error_per_mille: u64,
    /// Deliberate bug: a sync reports success without making anything durable (a disk or a
    /// store that ignores `fsync`).
    pub lying_sync: bool,
}

/// One write, as the disk keeps it until it is synced or lost.
#[derive(Clone, Debug)]
enum Op {
    Persist(PersistRequest),
    Purge(LogIndex),
    SaveMeta(SnapshotMeta),
    Reset(SnapshotMeta),
}

/// What survives a crash, shared by every incarnation of the host's store.
#[derive(Debug)]
struct Platter {
    /// Durable writes, in order.
    synced: Vec<Op>,
    /// Written, not yet durable, with their sequence numbers.
    pending: Vec<(u64, Op)>,
    /// Writes that a failed sync covered: visible until the next crash, never durable.
    doomed: u64,
    next_seq: u64,
    /// Latest completion time handed out: writes complete in the order they were made.
    busy_until: Option<Instant>,
    rng: SimRng,
    faults: DiskFaults,
    stats: DiskStats,
}

/// What a disk did over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Syncs completed (successful or lying).
    pub syncs: u64,
    /// Writes that failed with an I/O error.
    pub write_errors: u64,
    /// Syncs that failed with an I/O error.
    pub sync_errors: u64,
    /// Unsynced writes lost in crashes.
    pub lost_in_crashes: u64,
    /// Unsynced writes that reached the platter before a crash anyway.
    pub kept_in_crashes: u64,
}

impl Platter {
    fn push(&mut self, op: Op) -> u64 {
        self.next_seq += 1;
        self.pending.push((self.next_seq, op));
        self.next_seq
    }

    /// Every pending write up to `seq` becomes durable.
    fn sync_through(&mut self, seq: u64) {
        self.stats.syncs += 1;
        if self.faults.lying_sync {
            return;
        }
        let keep = self.pending.iter().take_while(|(s, _)| *s <= seq).count();
        self.synced
            .extend(self.pending.drain(..keep).map(|(_, op)| op));
    }

    /// A failed sync: the writes up to `seq` will never be durable (they stay visible in this
    /// incarnation only).
    fn fail_sync_through(&mut self, seq: u64) {
        self.stats.sync_errors += 1;
        let doomed = self.pending.iter().take_while(|(s, _)| *s <= seq).count();
        self.pending.drain(..doomed);
        self.doomed += doomed as u64;
    }

    /// How long the next write takes, and when it completes (never before the previous one).
    fn completion(&mut self, now: Instant) -> Instant {
        let ms = if self.faults.stall_per_mille > 0 && self.rng.chance(self.faults.stall_per_mille)
        {
            self.faults.stall_ms
        } else {
            self.rng.below(self.faults.max_latency_ms + 1)
        };
        let start = self.busy_until.map_or(now, |b| b.max(now));
        let done = start + Duration::from_millis(ms);
        self.busy_until = Some(done);
        done
    }
}

/// The platter of one simulated host's log store: it outlives the store's incarnations.
#[derive(Clone, Debug)]
pub struct Disk {
    platter: Arc<Mutex<Platter>>,
}

impl Disk {
    /// An empty disk misbehaving as `faults` says, its random choices drawn from `seed`.
    pub fn new(seed: u64, faults: DiskFaults) -> Disk {
        Disk {
            platter: Arc::new(Mutex::new(Platter {
                synced: Vec::new(),
                pending: Vec::new(),
                doomed: 0,
                next_seq: 0,
                busy_until: None,
                rng: SimRng::new(seed),
                faults,
                stats: DiskStats::default(),
            })),
        }
    }

    /// Changes how the disk misbehaves from now on.
    pub fn set_faults(&self, faults: DiskFaults) {
        self.platter.lock().faults = faults;
    }

    /// The machine lost power: of the unsynced writes, a random prefix reached the platter
    /// (writes reach it in order), the rest is gone.
    pub fn crash(&self, rng: &mut SimRng) {
        let mut p = self.platter.lock();
        let pending = p.pending.len() as u64;
        let kept = rng.below(pending + 1);
        let kept_ops: Vec<Op> = p
            .pending
            .drain(..)
            .take(kept as usize)
            .map(|(_, op)| op)
            .collect();
        p.synced.extend(kept_ops);
        p.stats.kept_in_crashes += kept;
        p.stats.lost_in_crashes += pending - kept + p.doomed;
        p.doomed = 0;
        p.busy_until = None;
    }

    /// Opens the store over what is durable (after a crash, or at the first start).
    pub fn open(&self) -> SimDisk {
        let visible = MemoryStore::new();
        for op in &self.platter.lock().synced {
            // Every recorded write was valid when it was made, so replaying it succeeds.
            let _ = match op {
                Op::Persist(req) => visible.persist_now(req),
                Op::Purge(up_to) => visible.purge_now(*up_to),
                Op::SaveMeta(meta) => now(visible.save_snapshot_meta(meta)),
                Op::Reset(meta) => visible.reset_to_snapshot_now(meta),
            };
        }
        SimDisk {
            visible,
            platter: self.platter.clone(),
        }
    }

    /// What the disk did so far.
    pub fn stats(&self) -> DiskStats {
        self.platter.lock().stats
    }
}

/// Polls a future that is ready at once (the memory store's).
fn now<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("the memory store's futures are ready at once"),
    }
}

fn io_error(op: &'static str) -> StorageError {
    StorageError::Io {
        path: "simulated-disk".into(),
        op,
        source: std::io::Error::other("injected I/O error").into(),
    }
}

/// One incarnation of a host's log store over its [`Disk`]: a [`LogStore`] for the node.
#[derive(Clone, Debug)]
pub struct SimDisk {
    visible: MemoryStore,
    platter: Arc<Mutex<Platter>>,
}

impl SimDisk {
    /// Records `op` (already applied to the visible state) and returns a future that completes
    /// once the write is done: synced if `sync`, failed if the disk says so.
    fn write(
        &self,
        apply: impl FnOnce(&MemoryStore) -> Result<(), StorageError>,
        op: Op,
        sync: bool,
    ) -> Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send + 'static>> {
        let platter = self.platter.clone();
        let prepared = {
            let p = &mut *platter.lock();
            let faults = p.faults;
            if faults.write_error_per_mille > 0 && p.rng.chance(faults.write_error_per_mille) {
                p.stats.write_errors += 1;
                Err(io_error("writing"))
            } else {
                apply(&self.visible).map(|()| {
                    let seq = p.push(op);
                    let fails = sync
                        && faults.sync_error_per_mille > 0
                        && p.rng.chance(faults.sync_error_per_mille);
                    (seq, p.completion(Instant::now()), fails)
                })
            }
        };
        Box::pin(async move {
            let (seq, done_at, fails) = prepared?;
            tokio::time::sleep_until(done_at).await;
            if !sync {
                return Ok(());
            }
            let mut p = platter.lock();
            if fails {
                p.fail_sync_through(seq);
                return Err(io_error("syncing"));
            }
            p.sync_through(seq);
            Ok(())
        })
    }
}

impl LogStore for SimDisk {
    type Reader = MemoryStore;

    fn reader(&self) -> MemoryStore {
        self.visible.clone()
    }

    fn load_state(&self) -> impl Future<Output = Result<StoredState, StorageError>> + Send {
        self.visible.load_state()
    }

    fn persist(
        &self,
        req: &PersistRequest,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        self.write(
            |v| v.persist_now(req),
            Op::Persist(req.clone()),
            req.must_sync,
        )
    }

    fn read_entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<Entry>, StorageError>> + Send {
        let mut out = Vec::new();
        let result = self
            .visible
            .entries(low, high, max_bytes, &mut out)
            .map(|()| out);
        std::future::ready(result)
    }

    fn purge(&self, up_to: LogIndex) -> impl Future<Output = Result<(), StorageError>> + Send {
        self.write(|v| v.purge_now(up_to), Op::Purge(up_to), true)
    }

    fn save_snapshot_meta(
        &self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        self.write(
            |v| now(v.save_snapshot_meta(meta)),
            Op::SaveMeta(meta.clone()),
            true,
        )
    }

    fn reset_to_snapshot(
        &self,
        meta: &SnapshotMeta,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        self.write(
            |v| v.reset_to_snapshot_now(meta),
            Op::Reset(meta.clone()),
            true,
        )
    }

    fn sync(&self) -> impl Future<Output = Result<(), StorageError>> + Send {
        let platter = self.platter.clone();
        let done_at = platter.lock().completion(Instant::now());
        async move {
            tokio::time::sleep_until(done_at).await;
            let mut p = platter.lock();
            let seq = p.next_seq;
            p.sync_through(seq);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use dengine_core::{EntryPayload, HardState};

    use super::*;

    fn append(index: LogIndex) -> PersistRequest {
        PersistRequest::new(
            Some(HardState {
                term: 1,
                vote: Some(1),
                commit: 0,
            }),
            vec![Entry::new(1, index, EntryPayload::Blank)],
            true,
        )
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_crash_keeps_what_was_synced_and_a_prefix_of_the_rest() {
        let disk = Disk::new(1, DiskFaults::default());
        let store = disk.open();
        rt().block_on(async {
            store.persist(&append(1)).await.unwrap();
            // Written but never synced: its future is dropped before it completes.
            let mut unsynced = append(2);
            unsynced.must_sync = false;
            store.persist(&unsynced).await.unwrap();
            assert_eq!(store.reader().last_index(), 2);
        });
        let mut rng = SimRng::new(3);
        disk.crash(&mut rng);
        let reopened = disk.open();
        let last = reopened.reader().last_index();
        assert!((1..=2).contains(&last), "kept {last}");
        let stats = disk.stats();
        assert_eq!(stats.kept_in_crashes + stats.lost_in_crashes, 1);
    }

    #[test]
    fn a_lying_sync_makes_nothing_durable() {
        // Some crash loses writes that were reported durable.
        let lost = (0..20).any(|seed| {
            let disk = Disk::new(
                1,
                DiskFaults {
                    lying_sync: true,
                    ..DiskFaults::default()
                },
            );
            let store = disk.open();
            rt().block_on(async {
                for i in 1..=20 {
                    store.persist(&append(i)).await.unwrap();
                }
            });
            disk.crash(&mut SimRng::new(seed));
            disk.open().reader().last_index() < 20
        });
        assert!(lost);
    }

    #[test]
    fn a_failed_sync_is_an_error_and_its_writes_never_become_durable() {
        let disk = Disk::new(
            1,
            DiskFaults {
                sync_error_per_mille: 1000,
                ..DiskFaults::default()
            },
        );
        let store = disk.open();
        rt().block_on(async {
            let err = store.persist(&append(1)).await.unwrap_err();
            assert!(err.to_string().contains("syncing"), "{err}");
        });
        assert_eq!(store.reader().last_index(), 1, "still visible");
        disk.crash(&mut SimRng::new(0));
        assert_eq!(disk.open().reader().last_index(), 0, "never durable");
    }

    #[test]
    fn writes_complete_in_order_after_their_latency() {
        let disk = Disk::new(
            9,
            DiskFaults {
                max_latency_ms: 20,
                ..DiskFaults::default()
            },
        );
        let store = disk.open();
        rt().block_on(async {
            let start = Instant::now();
            let (one, two) = (append(1), append(2));
            let first = store.persist(&one);
            let second = store.persist(&two);
            let (a, b) = tokio::join!(first, second);
            a.unwrap();
            b.unwrap();
            assert!(start.elapsed() <= Duration::from_millis(40));
        });
        disk.crash(&mut SimRng::new(0));
        assert_eq!(disk.open().reader().last_index(), 2);
    }
}
