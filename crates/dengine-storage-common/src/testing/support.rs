//! Small helpers for storage tests: entries whose payload checks itself, and executors.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use bytes::Bytes;
use dengine_core::{Entry, EntryPayload, LogIndex, Term};

/// A normal entry whose payload is derived from its index and term, so that a reader can
/// check it without remembering it.
pub fn test_entry(term: Term, index: LogIndex, len: usize) -> Entry {
    let seed = index.wrapping_mul(31).wrapping_add(term);
    let data: Vec<u8> = (0..len)
        .map(|i| (seed.wrapping_add(i as u64) % 251) as u8)
        .collect();
    Entry::new(term, index, EntryPayload::Normal(Bytes::from(data)))
}

/// Runs a future to completion on the current thread, without any runtime. Enough for stores
/// whose futures need no particular executor (such as `MemoryStore`); and it shows that a
/// backend's futures fail cleanly outside tokio.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => thread::park(),
        }
    }
}

/// A single-threaded tokio runtime, the executor the workspace backends' tests use.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a tokio runtime: {e}"))
}
