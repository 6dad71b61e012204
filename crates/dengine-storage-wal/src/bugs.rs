//! Deliberate recovery bugs, in test builds only, for the tests that show the WAL's own checks
//! catch each of them: a checksum not verified, a torn tail taken for corruption, and
//! corruption taken for a torn tail (which would silently cut synced records).

use std::cell::Cell;

/// A recovery mistake that [`with`] switches on for the current thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecoveryBug {
    /// Frames are accepted whatever their CRC32C says.
    SkipChecksum,
    /// A torn tail (a batch whose write never completed) is refused as corruption: a node
    /// would not restart after an ordinary power loss.
    TornTailAsCorruption,
    /// Damage followed by valid records is cut off as if it were a torn tail: synced records
    /// after it would be dropped without a word.
    CorruptionAsTornTail,
}

thread_local! {
    static ON: Cell<Option<RecoveryBug>> = const { Cell::new(None) };
}

/// Whether `bug` is switched on for this thread.
pub(crate) fn on(bug: RecoveryBug) -> bool {
    ON.with(|on| on.get() == Some(bug))
}

/// Runs `f` with `bug` switched on for this thread (off again afterwards, also if `f` panics).
pub(crate) fn with<R>(bug: RecoveryBug, f: impl FnOnce() -> R) -> R {
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            ON.with(|on| on.set(None));
        }
    }
    ON.with(|on| on.set(Some(bug)));
    let _off = Off;
    f()
}

/// Runs `f` with `bug` on and says whether it failed (panicked).
pub(crate) fn caught(bug: RecoveryBug, f: impl FnOnce()) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| with(bug, f))).is_err()
}
