//! Crash safety: a child process appends with `must_sync` and reports every index once
//! `persist` returned; the parent SIGKILLs it at random moments, reopens the store and checks
//! that everything reported is there, intact, and that the log is a clean contiguous prefix.
//!
//! The child is the backend's test binary itself, re-executed with `CHILD_ENV` set and
//! filtered to the test that called [`sigkill_test`] (named by the caller); that test calls
//! [`child`] first, which does the child's work when [`is_child`] and nothing otherwise
//! ([`run_suites`](super::run_suites) does both).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dengine_core::{Entry, HardState, LogIndex, LogStore, PersistRequest, Term};

use super::factory::Opener;
use super::support::{Rng, test_entry};

const CHILD_ENV: &str = "DENGINE_CRASH_CHILD_DIR";
/// The whole test stops starting new rounds after this long.
const BUDGET: Duration = Duration::from_secs(15);
const MIN_ROUNDS: usize = 4;
const MAX_ROUNDS: usize = 50;
/// A child that is never killed (the parent died) stops by itself after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);

fn term_for(index: LogIndex) -> Term {
    1 + index / 100
}

fn len_for(index: LogIndex) -> usize {
    (index as usize * 37) % 300
}

fn expected(index: LogIndex) -> Entry {
    test_entry(term_for(index), index, len_for(index))
}

/// Kills and reaps the child however the test ends (including a failed assertion).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether this process is the re-executed writer child of [`sigkill_test`].
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// The child's work: when re-executed as the child, appends in a loop and reports each durable
/// index on stdout; in a normal test run, does nothing.
pub fn child<S: LogStore>(open_or_create: Opener<S>) {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return; // a normal test run: nothing to do
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(child_main(PathBuf::from(dir), open_or_create));
}

async fn child_main<S: LogStore>(dir: PathBuf, open_or_create: Opener<S>) {
    let started = Instant::now();
    let store = open_or_create(&dir).unwrap();
    let state = store.load_state().await.unwrap();
    let mut next = state.last_index + 1;
    let mut stdout = std::io::stdout().lock();
    let mut batches = 0u64;
    while started.elapsed() < CHILD_LIFETIME {
        batches += 1;
        let count = 1 + next % 7;
        // Every fifth batch re-writes the last two entries identically: the truncate-then-
        // append path must be crash-safe too, and must not lose what it rewrites.
        let from = if batches.is_multiple_of(5) {
            next.saturating_sub(2).max(state.first_index).max(1)
        } else {
            next
        };
        let last = next + count - 1;
        let entries: Vec<Entry> = (from..=last).map(expected).collect();
        let hs = HardState {
            term: term_for(last),
            vote: Some(1),
            commit: next - 1,
        };
        store
            .persist(&PersistRequest::new(Some(hs), entries, true))
            .await
            .unwrap();
        writeln!(stdout, "durable {last}").unwrap();
        stdout.flush().unwrap();
        next = last + 1;
        if batches.is_multiple_of(40) && last > 50 {
            store.purge(last - 50).await.unwrap();
            writeln!(stdout, "purged {}", last - 50).unwrap();
            stdout.flush().unwrap();
        }
    }
}

/// Runs one child, kills it after `delay`, and returns the highest index it reported durable.
fn run_and_kill(test: &str, dir: &Path, delay: Duration) -> LogIndex {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    let stdout = guard.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("durable ") {
                let _ = tx.send(n.parse::<LogIndex>().unwrap());
            }
        }
    });
    thread::sleep(delay);
    if let Some(status) = guard.0.try_wait().unwrap() {
        panic!("the writer exited by itself before it was killed: {status}");
    }
    // `Child::kill` sends SIGKILL on Unix: no destructor, no flush, no clean shutdown.
    guard.0.kill().unwrap();
    guard.0.wait().unwrap();
    reader.join().unwrap();
    rx.try_iter().max().unwrap_or(0)
}

async fn verify<S: LogStore>(dir: &Path, reported: LogIndex, open: Opener<S>) -> LogIndex {
    let store = match open(dir) {
        Ok(store) => store,
        // Killed while creating the store, before it existed: nothing can have been reported.
        Err(dengine_core::StorageError::NotFound { .. }) if reported == 0 => return 0,
        Err(e) => panic!("reopening after SIGKILL failed: {e}"),
    };
    let state = store.load_state().await.unwrap();
    assert!(
        state.last_index >= reported,
        "lost durable entries: the writer reported {reported}, the log ends at {}",
        state.last_index
    );
    assert!(state.hard_state.commit <= state.last_index);
    if reported > 0 || state.last_index > 0 {
        // The hard state is written with the entries: any persisted batch brought it.
        assert_eq!(state.hard_state.vote, Some(1));
    } else {
        // Killed after the store was created but before its first batch was durable: nothing
        // was written, so there is no vote yet (seen when a very early kill hits round one).
        assert!(
            matches!(state.hard_state.vote, None | Some(1)),
            "{:?}",
            state.hard_state
        );
    }
    let mut next = state.first_index;
    while next <= state.last_index {
        let page = store
            .read_entries(next, state.last_index + 1, 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("reading back from {next} failed: {e}"));
        for entry in page {
            assert_eq!(
                entry,
                expected(entry.index),
                "entry {} differs",
                entry.index
            );
            next = entry.index + 1;
        }
    }
    state.last_index
}

/// The backend's crash test: SIGKILLs the writer child at random moments (up to 50 rounds or
/// 15 s), reopening the store with `open` after each and checking that every index the child
/// reported durable is present and intact and that the log is a clean prefix.
///
/// `test` is the name of the calling test, which must call [`child`] before anything else.
pub fn sigkill_test<S: LogStore>(test: &str, open: Opener<S>) {
    let root = tempfile::tempdir().unwrap();
    // One store across all rounds: later rounds also exercise recovery of a recovered store.
    let dir = root.path().join("store");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed:#x}");
    let mut rng = Rng(seed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut rounds = 0;
    let mut total_reported = 0;
    let mut last = 0;
    while rounds < MIN_ROUNDS || (rounds < MAX_ROUNDS && started.elapsed() < BUDGET) {
        // Mostly kill mid-stream; sometimes very early, while the store is being opened.
        let delay = if rng.below(5) == 0 {
            Duration::from_millis(rng.below(30))
        } else {
            Duration::from_millis(50 + rng.below(400))
        };
        let reported = run_and_kill(test, &dir, delay);
        last = runtime.block_on(verify(&dir, reported, open));
        total_reported = total_reported.max(reported);
        rounds += 1;
    }
    eprintln!(
        "{rounds} SIGKILLs in {:.1?}; highest index reported durable {total_reported}, \
         log ends at {last}",
        started.elapsed()
    );
    assert!(
        total_reported > 0,
        "the writer never reported a durable write"
    );
}
