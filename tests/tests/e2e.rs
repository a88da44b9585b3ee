//! End-to-end tests: the real rmm-monitor against this kernel. Each test starts its own
//! daemon (one at a time, see `Monitor`), makes real execs, connects and DNS queries on
//! loopback only, and asserts on the fields of the printed events and on the final stats.
//!
//! Root only: without root each test prints `skipped: needs root` and returns.

mod e2e {
    pub mod connect;
    pub mod dns;
    pub mod exec;
    pub mod lifecycle;
    pub mod memory;
    pub mod overload;
    pub mod signals;
}

use std::path::Path;

use rmm_tests::HelperRun;

pub use rmm_tests::root_or_skip;

pub fn helper_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rmm-probe-helper"))
}

/// Runs the probe helper to completion (bounded).
pub fn helper(args: &[&str]) -> HelperRun {
    rmm_tests::run_bounded(helper_bin(), args)
}

/// The helper's `comm` (its file name cut to 15 bytes).
pub fn helper_comm() -> String {
    rmm_tests::comm_of("rmm-probe-helper")
}
