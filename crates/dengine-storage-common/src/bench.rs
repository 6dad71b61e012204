//! Storage throughput: synced appends per second for batch sizes 1, 16 and 256 (256-byte
//! payloads, `must_sync = true`, one `persist` per batch as the runtime's group commit does),
//! next to two raw `fdatasync` rates of the same disk, measured in the same run: appending to
//! a growing file, and overwriting a preallocated (zero-filled) one, which syncs faster
//! because no block allocation has to be committed. The last line is the backend's batch-1
//! rate as a share of the raw overwrite rate.
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
const BATCHES: [u64; 3] = [1, 16, 256];

/// Runs the benchmark for one backend (`backend` names it in the output) with the arguments
/// of the current process.
pub fn main<S: LogStore>(backend: &str, open_or_create: Opener<S>) {
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
    let overwrites = raw_overwrite_fdatasync(&dir.join("raw-overwrite"), per_case);
    row("raw overwrite+fdatasync", 1, overwrites, per_case);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut batch_one = 0;
    for batch in BATCHES {
        let store_dir = dir.join(format!("{backend}-batch-{batch}"));
        let _ = fs::remove_dir_all(&store_dir);
        let appends = runtime.block_on(appends(&store_dir, batch, per_case, open_or_create));
        row(&format!("{backend} persist"), batch, appends, per_case);
        if batch == 1 {
            batch_one = appends;
        }
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
/// zeros (and synced), with an fdatasync after each write, as often as possible for
/// `duration`: the ceiling for a log that writes into preallocated segments.
fn raw_overwrite_fdatasync(path: &Path, duration: Duration) -> u64 {
    const LEN: u64 = 64 * 1024 * 1024;
    let file = fs::File::create(path).unwrap();
    let zeros = vec![0u8; 1024 * 1024];
    for chunk in 0..LEN / zeros.len() as u64 {
        file.write_all_at(&zeros, chunk * zeros.len() as u64)
            .unwrap();
    }
    file.sync_all().unwrap();
    let block = vec![0xa5u8; PAYLOAD];
    let started = Instant::now();
    let mut ops = 0;
    let mut at = 0;
    while started.elapsed() < duration {
        file.write_all_at(&block, at).unwrap();
        file.sync_data().unwrap();
        at = (at + PAYLOAD as u64) % LEN;
        ops += 1;
    }
    drop(file);
    let _ = fs::remove_file(path);
    ops
}

async fn appends<S: LogStore>(
    dir: &Path,
    batch: u64,
    duration: Duration,
    open_or_create: Opener<S>,
) -> u64 {
    let store = open_or_create(dir).unwrap();
    let payload = Bytes::from(vec![0x5au8; PAYLOAD]);
    let started = Instant::now();
    let mut next = 1;
    let mut ops = 0;
    while started.elapsed() < duration {
        let entries: Vec<Entry> = (next..next + batch)
            .map(|i| Entry::new(1, i, EntryPayload::Normal(payload.clone())))
            .collect();
        store
            .persist(&PersistRequest::new(None, entries, true))
            .await
            .unwrap();
        next += batch;
        ops += 1;
    }
    ops
}
