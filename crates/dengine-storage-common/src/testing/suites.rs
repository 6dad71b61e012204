//! Every storage suite for one backend, from its [`Damage`] steps: a backend's whole storage
//! test file is its `Damage` implementation and one test function,
//!
//! ```ignore
//! #[test]
//! fn storage_suites() { testing::run_suites::<MyFiles>() }
//! ```
//!
//! which must have that name: the SIGKILL test re-executes the test binary filtered to it, as
//! the writer it kills.

use super::bad_input::{Damage, open, open_or_create, run_bad_input};
use super::conformance::run_in_dirs;
use super::crash;

/// The name of the test that must call [`run_suites`].
pub const SUITES_TEST: &str = "storage_suites";

/// Runs the conformance suite, the damaged-input suite and the SIGKILL crash test against the
/// backend of `D`, opened with `D::options()`; call it from a test named [`SUITES_TEST`].
/// Panics on the first failure. In the SIGKILL test's re-executed child, it is the writer
/// instead.
pub fn run_suites<D: Damage>() {
    if crash::is_child() {
        crash::child(open_or_create::<D>);
        return;
    }
    eprintln!("conformance");
    run_in_dirs(open_or_create::<D>);
    eprintln!("damaged and foreign input");
    run_bad_input::<D>();
    eprintln!("SIGKILL");
    crash::sigkill_test(SUITES_TEST, open::<D>);
}
