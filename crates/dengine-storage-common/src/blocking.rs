//! Running a backend's blocking database calls from async code without stalling the
//! executor, writes in the order of the *calls* (whatever order their futures are polled in),
//! and a panic inside the database turned into a [`StorageError`] instead of tearing down the
//! runtime. [`Store`](crate::Store) runs every backend's calls through here; nothing else
//! needs to.
//!
//! Where a write runs depends on the runtime ([`ordered_write`]): on a multi-thread runtime
//! it runs at once on the calling thread inside [`tokio::task::block_in_place`], which first
//! hands the thread's other tasks to another thread; on a current-thread runtime it runs on
//! tokio's blocking pool. The first saves two thread hand-offs per write (to a blocking-pool
//! thread and back), which on a 2-core machine was a fifth of a batch-1 synced append:
//! `cargo xtask bench storage` measured the WAL's batch-1 appends at 0.78x the raw
//! overwrite+fdatasync rate through the blocking pool and 0.97-1.01x in place (see
//! docs/benchmarks.md).
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dengine_core::StorageError;
use parking_lot::{Condvar, Mutex};

/// What [`ordered_write`], [`blocking_read`] and [`guarded`] need from a backend's shared
/// state.
pub(crate) trait Blocking: Send + Sync + 'static {
    /// The backend's name, for error messages (`"redb"`).
    const NAME: &'static str;
    /// The file or directory the store lives in.
    fn path(&self) -> &Path;
    /// The backend's write sequencer.
    fn sequencer(&self) -> &Sequencer;
}

/// Hands out turns so that writes are applied in the order of the *calls*: a runtime may
/// issue several `persist` calls before awaiting any (pipelining), and they must reach the
/// disk in that order (protocol contract 3).
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    next_ticket: AtomicU64,
    serving: Mutex<u64>,
    turn: Condvar,
}

/// The right to write; the next ticket's turn comes when it is dropped (also on error).
struct Turn<'a>(&'a Sequencer);

impl Sequencer {
    fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::SeqCst)
    }

    /// Whether `ticket`'s turn has come (no earlier write is running or waiting). It stays
    /// so until that turn is taken and given back.
    fn is_turn(&self, ticket: u64) -> bool {
        *self.serving.lock() == ticket
    }

    fn wait_turn(&self, ticket: u64) -> Turn<'_> {
        let mut serving = self.serving.lock();
        while *serving != ticket {
            self.turn.wait(&mut serving);
        }
        Turn(self)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.serving.lock() += 1;
        self.0.turn.notify_all();
    }
}

/// Runs `f`, turning a panic inside the database into [`StorageError::Backend`].
pub(crate) fn guarded<B: Blocking, T>(
    shared: &B,
    op: &'static str,
    f: impl FnOnce(&B) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    catch_panic(shared.path(), op, B::NAME, || f(shared))
}

/// Runs `f`, turning a panic inside `database` (some engines `debug_assert` or index out of
/// bounds on damaged files) into [`StorageError::Backend`] naming `path`: a damaged disk must
/// not take the process down with it.
pub(crate) fn catch_panic<T>(
    path: &Path,
    op: &'static str,
    database: &str,
    f: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(StorageError::Backend {
            path: path.to_path_buf(),
            op,
            detail: format!("{database} panicked (the database is probably damaged)"),
        })
    })
}

fn no_runtime<B: Blocking>(
    shared: &B,
    op: &'static str,
    e: tokio::runtime::TryCurrentError,
) -> StorageError {
    StorageError::Backend {
        path: shared.path().to_path_buf(),
        op,
        detail: format!(
            "the {} store must be called inside a tokio runtime: {e}",
            B::NAME
        ),
    }
}

fn task_failed(path: &Path, op: &'static str, e: tokio::task::JoinError) -> StorageError {
    StorageError::Backend {
        path: path.to_path_buf(),
        op,
        detail: format!("the storage task failed: {e}"),
    }
}

/// A write started by [`ordered_write`]: finished in place, or running on the blocking pool.
pub(crate) enum Started<T> {
    Done(Result<T, StorageError>),
    Pooled(Result<tokio::task::JoinHandle<Result<T, StorageError>>, StorageError>),
}

/// Runs a write *now* (at call time, not at first poll), so that writes keep their call order;
/// the returned future yields its result. On a multi-thread runtime the write runs on the
/// calling thread (the caller's task waits for it, the thread's other tasks move to another
/// thread, see [`tokio::task::block_in_place`]); on a current-thread runtime, where that is
/// impossible, it is started on the blocking pool. Dropping the returned future does not
/// cancel the write.
pub(crate) fn ordered_write<B: Blocking, T: Send + 'static>(
    shared: &Arc<B>,
    op: &'static str,
    f: impl FnOnce(&B) -> Result<T, StorageError> + Send + 'static,
) -> impl Future<Output = Result<T, StorageError>> + Send + 'static {
    finish(shared, op, start_write(shared, op, f))
}

/// Starts a write for [`finish`] (see [`ordered_write`]).
pub(crate) fn start_write<B: Blocking, T: Send + 'static>(
    shared: &Arc<B>,
    op: &'static str,
    f: impl FnOnce(&B) -> Result<T, StorageError> + Send + 'static,
) -> Started<T> {
    match tokio::runtime::Handle::try_current() {
        Err(e) => Started::Pooled(Err(no_runtime(&**shared, op, e))),
        Ok(handle) => start(&handle, shared, op, shared.sequencer().ticket(), f),
    }
}

/// Starts a write for [`finish`] that may not need to wait on the disk: when no earlier
/// write is running or waiting and `in_place` says this one only copies bytes into memory (see
/// [`SyncLog::writes_in_place`](crate::SyncLog::writes_in_place)), it runs right here on the
/// calling thread, without first handing the thread's other tasks to another thread (a
/// thread wake-up, which costs more than such a write). Otherwise it is an [`ordered_write`].
pub(crate) fn start_small_write<B: Blocking, T: Send + 'static>(
    shared: &Arc<B>,
    op: &'static str,
    in_place: impl FnOnce(&B) -> bool,
    f: impl FnOnce(&B) -> Result<T, StorageError> + Send + 'static,
) -> Started<T> {
    let ticket = shared.sequencer().ticket();
    if shared.sequencer().is_turn(ticket) && in_place(shared) {
        let _turn = shared.sequencer().wait_turn(ticket);
        return Started::Done(guarded(&**shared, op, f));
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => start(&handle, shared, op, ticket, f),
        Err(e) => {
            // Outside a runtime (a plain thread): take and give up the turn, so that the
            // writes after this one are not held up by a ticket nobody serves.
            drop(shared.sequencer().wait_turn(ticket));
            Started::Pooled(Err(no_runtime(&**shared, op, e)))
        }
    }
}

/// Starts the write holding `ticket` (see [`ordered_write`]).
fn start<B: Blocking, T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    shared: &Arc<B>,
    op: &'static str,
    ticket: u64,
    f: impl FnOnce(&B) -> Result<T, StorageError> + Send + 'static,
) -> Started<T> {
    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        Started::Done(tokio::task::block_in_place(|| {
            let _turn = shared.sequencer().wait_turn(ticket);
            guarded(&**shared, op, f)
        }))
    } else {
        let task_shared = Arc::clone(shared);
        Started::Pooled(Ok(handle.spawn_blocking(move || {
            let _turn = task_shared.sequencer().wait_turn(ticket);
            guarded(&*task_shared, op, f)
        })))
    }
}

/// The future of a started write: its result.
pub(crate) fn finish<B: Blocking, T: Send + 'static>(
    shared: &Arc<B>,
    op: &'static str,
    started: Started<T>,
) -> impl Future<Output = Result<T, StorageError>> + Send + 'static {
    let path = shared.path().to_path_buf();
    async move {
        match started {
            Started::Done(result) => result,
            Started::Pooled(spawned) => spawned?.await.map_err(|e| task_failed(&path, op, e))?,
        }
    }
}

/// Runs a read on tokio's blocking pool, so that page reads never stall an executor thread.
pub(crate) async fn blocking_read<B: Blocking, T: Send + 'static>(
    shared: &Arc<B>,
    op: &'static str,
    f: impl FnOnce(&B) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let handle = tokio::runtime::Handle::try_current().map_err(|e| no_runtime(&**shared, op, e))?;
    let task_shared = Arc::clone(shared);
    handle
        .spawn_blocking(move || guarded(&*task_shared, op, f))
        .await
        .map_err(|e| task_failed(shared.path(), op, e))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    struct Log {
        path: PathBuf,
        sequencer: Sequencer,
        order: Mutex<Vec<u32>>,
    }

    impl Blocking for Log {
        const NAME: &'static str = "testdb";
        fn path(&self) -> &Path {
            &self.path
        }
        fn sequencer(&self) -> &Sequencer {
            &self.sequencer
        }
    }

    fn log() -> Arc<Log> {
        Arc::new(Log {
            path: PathBuf::from("/test/store"),
            sequencer: Sequencer::default(),
            order: Mutex::new(Vec::new()),
        })
    }

    /// Makes `n` writes, earlier ones slower (without the sequencer they would finish last),
    /// awaits them in reverse, and returns the order they were applied in.
    async fn applied_order_when_polled_in_reverse(n: u32) -> Vec<u32> {
        let shared = log();
        let futures: Vec<_> = (0..n)
            .map(|i| {
                ordered_write(&shared, "writing", move |s: &Log| {
                    std::thread::sleep(Duration::from_millis(u64::from(n - i)));
                    s.order.lock().push(i);
                    Ok(i)
                })
            })
            .collect();
        for f in futures.into_iter().rev() {
            f.await.unwrap();
        }
        shared.order.lock().clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_apply_in_call_order_even_when_polled_in_reverse() {
        let order = applied_order_when_polled_in_reverse(20).await;
        assert_eq!(order, (0..20).collect::<Vec<_>>());
    }

    /// The blocking pool's threads race; the sequencer still applies writes in call order.
    #[tokio::test(flavor = "current_thread")]
    async fn on_a_current_thread_runtime_writes_still_apply_in_call_order() {
        let order = applied_order_when_polled_in_reverse(10).await;
        assert_eq!(order, (0..10).collect::<Vec<_>>());
    }

    /// On a multi-thread runtime a write runs in place at call time, and the thread's other
    /// tasks are not held up by it: with one worker thread, a task spawned before the write
    /// keeps running while the write blocks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_write_in_place_runs_at_call_time_and_does_not_stall_other_tasks() {
        let shared = log();
        let (ticks, ticker) = ticker().await;
        let writer = Arc::clone(&shared);
        let seen_during_write = tokio::spawn(async move {
            let before = Arc::new(AtomicU64::new(0));
            let future = ordered_write(&writer, "writing", |s: &Log| {
                std::thread::sleep(Duration::from_millis(200));
                s.order.lock().push(1);
                Ok(())
            });
            // The write is done before its future is polled.
            before.store(writer.order.lock().len() as u64, Ordering::SeqCst);
            future.await.unwrap();
            before.load(Ordering::SeqCst)
        });
        let ticks_at_start = ticks.load(Ordering::SeqCst);
        assert_eq!(seen_during_write.await.unwrap(), 1);
        let ticked = ticks.load(Ordering::SeqCst) - ticks_at_start;
        ticker.abort();
        // ~40 ticks of 5 ms fit in the 200 ms write; a stalled thread would allow none.
        assert!(ticked >= 5, "only {ticked} ticks while the write blocked");
    }

    /// Starts a task that counts every 5 ms, and lets it start (on the only worker, in the
    /// tests that have one); returns its count and the task.
    async fn ticker() -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
        let ticks = Arc::new(AtomicU64::new(0));
        let ticking = Arc::clone(&ticks);
        let task = tokio::spawn(async move {
            loop {
                ticking.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        (ticks, task)
    }

    /// Ticks of `ticks` while a small write of 100 ms runs, `in_place` or not.
    async fn ticks_during_small_write(shared: &Arc<Log>, ticks: &AtomicU64, in_place: bool) -> u64 {
        let before = ticks.load(Ordering::SeqCst);
        let started = start_small_write(
            shared,
            "writing",
            |_| in_place,
            |s: &Log| {
                std::thread::sleep(Duration::from_millis(100));
                s.order.lock().push(1);
                Ok(())
            },
        );
        let during = ticks.load(Ordering::SeqCst) - before;
        finish(shared, "writing", started).await.unwrap();
        during
    }

    /// A write its backend calls small runs right on the calling thread, without handing the
    /// thread's tasks to another (so, on the only worker, nothing else runs meanwhile); one it
    /// does not goes through `block_in_place` like any write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_small_write_runs_on_the_calling_thread_without_handing_its_tasks_over() {
        let shared = log();
        let (ticks, task) = ticker().await;
        // The writes run in a task, on the worker (the test's own body runs on another thread).
        let on_worker = |in_place| {
            let (shared, ticks) = (Arc::clone(&shared), Arc::clone(&ticks));
            tokio::spawn(async move { ticks_during_small_write(&shared, &ticks, in_place).await })
        };
        assert_eq!(on_worker(true).await.unwrap(), 0);
        let handed_over = on_worker(false).await.unwrap();
        task.abort();
        assert!(
            handed_over >= 5,
            "only {handed_over} ticks while the write ran"
        );
        assert_eq!(*shared.order.lock(), [1, 1]);
    }

    /// A small write called while another write runs waits for it (call order holds) and does
    /// not even ask whether it is small; a write after it still gets its turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_write_behind_a_running_write_waits_its_turn() {
        let shared = log();
        let asked = Arc::new(AtomicU64::new(0));
        let slow_shared = Arc::clone(&shared);
        let slow = tokio::spawn(async move {
            ordered_write(&slow_shared, "writing", |s: &Log| {
                std::thread::sleep(Duration::from_millis(200));
                s.order.lock().push(1);
                Ok(())
            })
            .await
        });
        // Let the slow write take its turn.
        while shared.sequencer.next_ticket.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let asking = Arc::clone(&asked);
        let started = start_small_write(
            &shared,
            "writing",
            move |_| {
                asking.fetch_add(1, Ordering::SeqCst);
                true
            },
            |s: &Log| {
                s.order.lock().push(2);
                Ok(())
            },
        );
        finish(&shared, "writing", started).await.unwrap();
        ordered_write(&shared, "writing", |s: &Log| {
            s.order.lock().push(3);
            Ok(())
        })
        .await
        .unwrap();
        slow.await.unwrap().unwrap();
        assert_eq!(*shared.order.lock(), [1, 2, 3]);
        assert_eq!(asked.load(Ordering::SeqCst), 0);
    }

    /// Outside a runtime a small write still runs (it needs no thread of the runtime); one that
    /// is not small fails as any write does there, and gives its turn back for the next.
    #[test]
    fn outside_a_runtime_a_small_write_runs_and_a_large_one_fails_without_blocking_the_next() {
        let shared = log();
        let write = |in_place: bool, mark: u32| {
            let started = start_small_write(
                &shared,
                "writing",
                |_| in_place,
                move |s: &Log| {
                    s.order.lock().push(mark);
                    Ok(())
                },
            );
            futures_lite_block_on(finish(&shared, "writing", started))
        };
        write(true, 1).unwrap();
        let err = write(false, 2).unwrap_err().to_string();
        assert!(err.contains("inside a tokio runtime"), "{err}");
        write(true, 3).unwrap();
        assert_eq!(*shared.order.lock(), [1, 3]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_the_database_is_an_error_and_later_writes_still_run() {
        let shared = log();
        let err = ordered_write(&shared, "writing", |_: &Log| -> Result<(), StorageError> {
            panic!("corrupt page")
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("testdb panicked"), "{err}");
        assert!(err.contains("/test/store"), "{err}");
        ordered_write(&shared, "writing", |_: &Log| Ok(()))
            .await
            .unwrap();
        blocking_read(&shared, "reading", |_: &Log| Ok(()))
            .await
            .unwrap();
    }

    #[test]
    fn outside_a_runtime_the_error_says_so() {
        let shared = log();
        let err = futures_lite_block_on(ordered_write(&shared, "writing", |_: &Log| Ok(())));
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.contains("the testdb store must be called inside a tokio runtime"),
            "{msg}"
        );
    }

    /// Polls a future that is ready at once (no runtime needed).
    fn futures_lite_block_on<F: Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // The future was created outside any runtime; polling it inside one is fine.
        rt.block_on(f)
    }
}
