//! Crash safety: a child process appends with `must_sync` and reports every durable index;
//! the parent SIGKILLs it at random moments and checks nothing reported was lost (the harness
//! is `dengine_storage_common::crash`).
#![allow(missing_docs)]

use dengine_storage_wal::WalStore;

#[test]
fn crash_child() {
    dengine_storage_common::crash::child(|dir| WalStore::open_or_create(dir));
}

#[test]
fn sigkilled_writer_loses_nothing_it_reported() {
    dengine_storage_common::crash::sigkill_test(|dir| WalStore::open(dir));
}
