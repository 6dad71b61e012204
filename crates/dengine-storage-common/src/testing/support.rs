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

/// SplitMix64: the suites' deterministic random numbers, so that a failure reproduces from
/// its seed. Also for backends' own randomized tests (`Rng(seed)`).
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
