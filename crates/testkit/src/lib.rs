//! Test support shared by every crate's tests (a dev-dependency only).
//!
//! - [`netns`]: uniquely named network namespaces that clean up after themselves, also
//!   after a test was killed halfway (stale ones are swept by owner pid).
//! - [`testdata`]: the shared expected-behaviour corpus in `../shared/testdata`, read in
//!   place, never copied.
//! - [`require_root`]: privileged tests skip with a reason when not root, unless
//!   `TWILL_REQUIRE_ROOT=1` (as in CI), where the skip becomes a failure.

pub mod fuzz;
pub mod netns;
pub mod testdata;

/// True when the test may run privileged steps. Otherwise prints why it is skipped, or
/// panics when `TWILL_REQUIRE_ROOT=1` says skipping is not allowed.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("TWILL_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{test}: needs CAP_NET_ADMIN (run as root); TWILL_REQUIRE_ROOT=1 forbids skipping");
    }
    eprintln!("{test}: skipped: needs CAP_NET_ADMIN (run as root)");
    false
}

/// True when `program` is on PATH. Like [`require_root`], a missing tool skips the test
/// unless `TWILL_REQUIRE_ROOT=1`.
pub fn require_tool(test: &str, program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        || std::path::Path::new(program).is_file();
    if found {
        return true;
    }
    if std::env::var("TWILL_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{test}: needs {program}; TWILL_REQUIRE_ROOT=1 forbids skipping");
    }
    eprintln!("{test}: skipped: {program} is not installed");
    false
}
