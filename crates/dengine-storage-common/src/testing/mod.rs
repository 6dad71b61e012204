//! Test suites every `LogStore` backend runs unchanged (feature `testing`), and their helpers.
//!
//! - [`run_conformance`] / [`run_in_dirs`]: the conformance suite for the `LogStore` contract
//!   (`conformance.rs`, with its cases in `cases_log.rs` and `cases_durability.rs` and their
//!   shared checks in `checks.rs`).
//! - [`run_bad_input`]: damaged and foreign input (`bad_input.rs`), with the backend-specific
//!   steps supplied through [`Damage`].
//! - [`crash`]: the SIGKILL crash harness.
//! - [`run_suites`]: all of them for a backend built on [`Store`](crate::Store), from its
//!   [`Damage`] steps (`suites.rs`).
//! - [`test_entry`], [`block_on`], [`runtime`], and the store factories.

// This module exists to fail tests: assertions and panics are its output, not a bug.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod cases_durability;
mod cases_log;
mod checks;
mod conformance;
pub mod crash;
mod factory;
mod suites;
mod support;

pub use bad_input::{Damage, marked, run_bad_input, write_marked};
pub use conformance::{run_conformance, run_in_dirs};
pub use factory::{DirFactory, MemoryFactory, Opener, StoreFactory};
pub use suites::{SUITES_TEST, run_suites};
pub use support::{Rng, block_on, runtime, test_entry};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_passes_the_conformance_suite() {
        block_on(run_conformance(&mut MemoryFactory::default()));
    }
}
