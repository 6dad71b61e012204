//! Storage throughput: synced appends per second for batch sizes 1, 16 and 256 (256-byte
//! payloads, `must_sync = true`, one `persist` per batch as the runtime's group commit does),
//! next to two raw `fdatasync` rates of the same disk, measured in the same run: appending to
//! a growing file, and overwriting a preallocated (zero-filled) one, which syncs faster
//! because no block allocation has to be committed. The raw overwrite loop and the backend's
//! batch-1 appends run in alternating rounds, so that both see the same disk; the last line is
//! the backend's batch-1 rate as a share of the raw overwrite rate.
//!
//! ```text
//! cargo xtask bench storage [--seconds N] [--dir PATH]
//! ```
//!
//! Each backend's example (`redb_storage_bench`, `sled_storage_bench`, `wal_storage_bench`)
//! is a call to [`main`].
//!
//! `--dir` should be on the disk you care about (the default is `target/storage-bench` under
//! the current directory; a tmpfs would make fsync free and the numbers meaningless).
// A command-line benchmark: a bad argument or a failing disk ends it with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dengine_core::{Entry, EntryPayload, LogStore, PersistRequest};

use crate::testing::Opener;

const PAYLOAD: usize = 256;
/// Batch sizes measured on their own, after batch 1 (which alternates with the raw overwrite
/// loop).
const BATCHES: [u64; 2] = [16, 256];
/// Rounds of (raw overwrite, batch 1) in the alternating comparison.
const ROUNDS: u32 = 6;

/// Runs the benchmark for one backend (`backend` names it in the output) with the arguments
/// of the current process.
pub fn main<S: LogStore + Send + Sync + 'static>(backend: &str, open_or_create: Opener<S>) {
    let mut seconds = 3.0f64;
    let mut dir = PathBuf::from("target/storage-bench");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds N")
            }
            "--dir" => dir = args.next().map(PathBuf::from).expect("--dir PATH"),
            "--bench" => {} // passed by `cargo bench`-style runners; ignored
            other => panic!("unknown argument {other:?}; use --seconds N and --dir PATH"),
        }
    }
    let per_case = Duration::from_secs_f64(seconds);
    fs::create_dir_all(&dir).unwrap();
    println!(
        "storage bench: {backend}, {PAYLOAD}-byte payloads, fsync on every append, {seconds}s per case, in {}",
        fs::canonicalize(&dir).unwrap().display()
    );
    println!(
        "{:<24} {:>7} {:>12} {:>12} {:>10} {:>12}",
        "case", "batch", "appends/s", "entries/s", "MiB/s", "us/append"
    );
    let syncs = raw_fdatasync(&dir.join("raw-fdatasync"), per_case);
    row("raw append+fdatasync", 1, syncs, per_case);

    // The target compares batch 1 with the raw overwrite rate, so those two are measured in
    // alternating rounds: a disk shared with other work changes speed within seconds, and
    // each side sees the same moments of it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Stores are opened and dropped inside the runtime, as a node would.
    let _inside = runtime.enter();
    let per_round = per_case / ROUNDS;
    let mut raw = RawOverwrite::create(&dir.join("raw-overwrite"));
    let one_dir = dir.join(format!("{backend}-batch-1"));
    let _ = fs::remove_dir_all(&one_dir);
    let mut one = Appender::open(&one_dir, open_or_create);
    let (mut overwrites, mut batch_one) = (0, 0);
    for _ in 0..ROUNDS {
        overwrites += raw.run(per_round);
        // In a spawned task on a worker thread, as the runtime persists.
        let (back, n) = runtime.block_on(async move {
            tokio::spawn(async move {
                let n = one.run(1, per_round).await;
                (one, n)
            })
            .await
            .unwrap()
        });
        one = back;
        batch_one += n;
    }
    drop((raw, one));
    let _ = fs::remove_dir_all(&one_dir);
    row("raw overwrite+fdatasync", 1, overwrites, per_round * ROUNDS);
    row(
        &format!("{backend} persist"),
        1,
        batch_one,
        per_round * ROUNDS,
    );

    for batch in BATCHES {
        let store_dir = dir.join(format!("{backend}-batch-{batch}"));
        let _ = fs::remove_dir_all(&store_dir);
        let mut appender = Appender::open(&store_dir, open_or_create);
        let appends = runtime.block_on(appender.run(batch, per_case));
        row(&format!("{backend} persist"), batch, appends, per_case);
        drop(appender);
        let _ = fs::remove_dir_all(&store_dir);
    }
    println!(
        "{backend} batch 1 vs raw overwrite+fdatasync: {:.2}, vs raw append+fdatasync: {:.2}",
        batch_one as f64 / overwrites.max(1) as f64,
        batch_one as f64 / syncs.max(1) as f64
    );
}

fn row(case: &str, batch: u64, ops: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    let per_sec = ops as f64 / secs;
    let entries = per_sec * batch as f64;
    println!(
        "{case:<24} {batch:>7} {per_sec:>12.0} {entries:>12.0} {:>10.2} {:>12.0}",
        entries * PAYLOAD as f64 / (1024.0 * 1024.0),
        if ops == 0 {
            0.0
        } else {
            secs * 1e6 / ops as f64
        },
    );
}

/// Appends `PAYLOAD` bytes and fdatasyncs, as often as possible for `duration`.
fn raw_fdatasync(path: &Path, duration: Duration) -> u64 {
    let mut file = fs::File::create(path).unwrap();
    let block = vec![0xa5u8; PAYLOAD];
    let started = Instant::now();
    let mut ops = 0;
    while started.elapsed() < duration {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        ops += 1;
    }
    drop(file);
    let _ = fs::remove_file(path);
    ops
}

/// Overwrites `PAYLOAD` bytes at a time, front to back, in a file preallocated by writing
/// zeros (and synced), with an fdatasync after each write: the ceiling for a log that writes
/// into preallocated segments.
struct RawOverwrite {
    path: PathBuf,
    file: fs::File,
    at: u64,
    block: Vec<u8>,
}

impl RawOverwrite {
    const LEN: u64 = 64 * 1024 * 1024;

    fn create(path: &Path) -> Self {
        let file = fs::File::create(path).unwrap();
        let zeros = vec![0u8; 1024 * 1024];
        for chunk in 0..Self::LEN / zeros.len() as u64 {
            file.write_all_at(&zeros, chunk * zeros.len() as u64)
                .unwrap();
        }
        file.sync_all().unwrap();
        RawOverwrite {
            path: path.to_path_buf(),
            file,
            at: 0,
            block: vec![0xa5u8; PAYLOAD],
        }
    }

    /// Writes and syncs as often as possible for `duration`; returns how many times.
    fn run(&mut self, duration: Duration) -> u64 {
        let started = Instant::now();
        let mut ops = 0;
        while started.elapsed() < duration {
            self.file.write_all_at(&self.block, self.at).unwrap();
            self.file.sync_data().unwrap();
            self.at = (self.at + PAYLOAD as u64) % Self::LEN;
            ops += 1;
        }
        ops
    }
}

impl Drop for RawOverwrite {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A backend's store and the next index to append at.
struct Appender<S> {
    store: S,
    next: u64,
    payload: Bytes,
}

impl<S: LogStore> Appender<S> {
    fn open(dir: &Path, open_or_create: Opener<S>) -> Self {
        Appender {
            store: open_or_create(dir).unwrap(),
            next: 1,
            payload: Bytes::from(vec![0x5au8; PAYLOAD]),
        }
    }

    /// Persists batches of `batch` entries, each synced, as often as possible for
    /// `duration`; returns how many batches.
    async fn run(&mut self, batch: u64, duration: Duration) -> u64 {
        let started = Instant::now();
        let mut ops = 0;
        while started.elapsed() < duration {
            let entries: Vec<Entry> = (self.next..self.next + batch)
                .map(|i| Entry::new(1, i, EntryPayload::Normal(self.payload.clone())))
                .collect();
            self.store
                .persist(&PersistRequest::new(None, entries, true))
                .await
                .unwrap();
            self.next += batch;
            ops += 1;
        }
        ops
    }
}
