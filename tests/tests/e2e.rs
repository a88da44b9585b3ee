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

use std::path::{Path, PathBuf};

use rmm_tests::{HelperRun, Monitor, TempDir};

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

/// The debug build's injected `hold` fault: a copy of /bin/true in `dir` whose exec makes every
/// ring reader stop reading for 5 s, and the `RMM_MONITOR_FAULT` value that arms it.
pub fn hold_fault(dir: &TempDir) -> (PathBuf, String) {
    let trigger = dir.copy_executable("/bin/true", &format!("hold-{}", rmm_tests::nonce()));
    let name = trigger
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a UTF-8 name")
        .to_owned();
    (trigger, format!("hold:{name}"))
}

/// Runs the trigger of [`hold_fault`] and waits until the daemon says its readers are held.
pub fn hold_readers(m: &Monitor, trigger: &Path) {
    let st = std::process::Command::new(trigger)
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", trigger.display()));
    assert!(st.success());
    m.wait_for_log("saying the readers are held", |l| {
        l.starts_with("injected fault: exec of") && l.contains("the ring readers stop reading")
    });
}

/// Waits until both ring readers read again after a hold.
pub fn wait_holds_over(m: &Monitor) {
    for ring in ["PROC_EVENTS", "NET_EVENTS"] {
        m.wait_for_log("saying a hold is over", |l| {
            l == format!("ring {ring}: injected hold over, reading again")
        });
    }
}

/// The loss records (`event.action: loss`) of a JSON alert file.
pub fn loss_records(alerts: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(alerts)
        .expect("the alert file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .filter(|a: &serde_json::Value| a["event"]["action"] == "loss")
        .collect()
}

/// A loopback TCP port free a moment ago (for the metrics endpoint).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .expect("binding a TCP port");
    l.local_addr().expect("local address").port()
}
