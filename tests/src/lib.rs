//! End-to-end test harness for rmm-monitor: start the real daemon, trigger real execs,
//! connects and DNS queries on loopback (through `rmm-probe-helper` where a precise syscall
//! is needed), and assert on the decoded events and the final stats.
//!
//! Root only: loading the probes needs it. Without root a test fails, saying so, unless
//! `RMM_TESTS_SKIP_ROOT=1` is set: then it prints `skipped: needs root` and returns (for a
//! developer who runs the suite unprivileged on purpose). A skip never passes unnoticed in CI,
//! which runs `cargo xtask test` as root.

pub mod dnswire;
pub mod journald;
pub mod metrics;
pub mod monitor;
pub mod responder;

use std::{
    collections::HashMap,
    ffi::OsStr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    str::FromStr,
    sync::mpsc,
    time::Duration,
};

pub use monitor::{Monitor, Stopped};
pub use serde_json::Value;

/// Returns from the test (after saying why) when not running as root and skipping was asked
/// for; fails it when not running as root otherwise.
#[macro_export]
macro_rules! root_or_skip {
    ($name:expr) => {
        if !rmm_tests::require_root($name) {
            return;
        }
    };
}

/// The variable that lets tests needing root skip instead of failing.
pub const SKIP_ROOT_VAR: &str = "RMM_TESTS_SKIP_ROOT";

/// True when running as root. Otherwise: false after saying why the test is skipped when
/// `RMM_TESTS_SKIP_ROOT=1`, and a panic (a failed test) when not.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if skip_allowed(std::env::var_os(SKIP_ROOT_VAR).as_deref()) {
        eprintln!("{test}: skipped: needs root (it loads eBPF programs); {SKIP_ROOT_VAR}=1");
        return false;
    }
    panic!(
        "{test}: needs root (it loads eBPF programs): run `cargo xtask test` as root, or set \
         {SKIP_ROOT_VAR}=1 to skip the tests that need root (the unit tests alone: \
         `cargo test --workspace --lib`)"
    );
}

/// Whether the opt-out variable's value asks for skipping: exactly `1`.
fn skip_allowed(value: Option<&OsStr>) -> bool {
    value == Some(OsStr::new("1"))
}

/// The daemon binary: `RMM_MONITOR_BIN`, else the workspace's debug build.
pub fn monitor_bin() -> PathBuf {
    let bin = std::env::var_os("RMM_MONITOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/rmm-monitor")
        });
    assert!(
        bin.is_file(),
        "rmm-monitor not found at {} (set RMM_MONITOR_BIN, or build it with `cargo xtask build`)",
        bin.display()
    );
    bin
}

/// 12 random hex digits, to tell this test's processes and names from everything else.
pub fn nonce() -> String {
    let mut b = [0u8; 6];
    // SAFETY: the buffer is valid for b.len() bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(
        n,
        b.len() as isize,
        "getrandom: {}",
        std::io::Error::last_os_error()
    );
    dnswire::to_hex(&b)
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of the events' `ts_ns` (bpf_ktime_get_ns).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    u64::try_from(ts.tv_sec).expect("monotonic seconds are positive") * 1_000_000_000
        + u64::try_from(ts.tv_nsec).expect("nanoseconds are positive")
}

/// The calling thread's id.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    u32::try_from(unsafe { libc::gettid() }).expect("tids are positive")
}

/// Where the cgroup v2 hierarchy is mounted (on hybrid layouts, `/sys/fs/cgroup/unified`).
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .min_by_key(|p| p.as_os_str().len())
        .expect("a cgroup2 file system is mounted")
}

/// The cgroup v2 id of this process: the inode number of its cgroup directory, which is
/// what `bpf_get_current_cgroup_id` returns.
pub fn own_cgroup_id() -> u64 {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("/proc/self/cgroup has a cgroup v2 line");
    let dir = cgroup2_root().join(rel.trim_start_matches('/'));
    std::fs::metadata(&dir)
        .unwrap_or_else(|e| panic!("stat {}: {e}", dir.display()))
        .ino()
}

/// A child cgroup of the cgroup v2 root, removed on drop (once its processes are gone).
pub struct Cgroup(PathBuf);

impl Cgroup {
    pub fn new() -> Cgroup {
        let dir = cgroup2_root().join(format!("rmm-e2e-{}", nonce()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Its id, as `bpf_get_current_cgroup_id` reports it for its members.
    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.0)
            .unwrap_or_else(|e| panic!("stat {}: {e}", self.0.display()))
            .ino()
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Cgroup::new()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A process that just exited may still be counted for a moment.
        for _ in 0..200 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("could not remove cgroup {}", self.0.display());
    }
}

/// A directory under /tmp removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("rmm-e2e-{tag}-{}", nonce()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A copy of `src` named `name` in this directory, mode 0755; returns its path.
    pub fn copy_executable(&self, src: &str, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dst = self.0.join(name);
        std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {src} to {}: {e}", dst.display()));
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dst.display()));
        dst
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A mount made by a test in this (the machine's) mount namespace, detached on drop.
pub struct Mount(PathBuf);

impl Mount {
    /// A fresh tmpfs on `target` (an existing directory).
    pub fn tmpfs(target: &Path) -> Mount {
        Mount::new(c"tmpfs", target, c"tmpfs", 0)
    }

    /// `src` bind-mounted on `target`.
    pub fn bind(src: &Path, target: &Path) -> Mount {
        let src =
            std::ffi::CString::new(src.as_os_str().as_encoded_bytes()).expect("no NUL in paths");
        Mount::new(&src, target, c"none", libc::MS_BIND)
    }

    fn new(
        src: &std::ffi::CStr,
        target: &Path,
        fstype: &std::ffi::CStr,
        flags: libc::c_ulong,
    ) -> Mount {
        let t =
            std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).expect("no NUL in paths");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                t.as_ptr(),
                fstype.as_ptr(),
                flags,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount {src:?} on {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
        Mount(target.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Ok(t) = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid path; MNT_DETACH never blocks.
            unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// What a finished helper process printed (`key=value` lines) and how it ended.
#[derive(Debug)]
pub struct HelperRun {
    pub pid: u32,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl HelperRun {
    /// Every value printed for `key`.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .collect()
    }

    /// The value printed for `key`; fails the test when there is none.
    pub fn get(&self, key: &str) -> &str {
        self.all(key).into_iter().next().unwrap_or_else(|| {
            panic!(
                "helper printed no {key}=; stdout:\n{}stderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn num<T: FromStr>(&self, key: &str) -> T {
        let v = self.get(key);
        v.parse()
            .unwrap_or_else(|_| panic!("helper's {key}={v} is not a number"))
    }

    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "helper failed ({}); stdout:\n{}stderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn map(&self) -> HashMap<&str, &str> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .collect()
    }
}

/// Runs a program to completion (bounded: 60 s), capturing its output.
pub fn run_bounded<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> HelperRun {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(monitor::scaled(Duration::from_secs(60))) {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {}: {e}", program.display())),
        Err(_) => {
            // SAFETY: kill(2); the child is not reaped until wait_with_output returns.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{} did not finish within 60 s", program.display());
        }
    };
    HelperRun {
        pid,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A numeric field of an event; fails the test when it is missing.
pub fn num(ev: &Value, key: &str) -> u64 {
    ev[key]
        .as_u64()
        .unwrap_or_else(|| panic!("event has no numeric {key}: {ev}"))
}

/// A signed numeric field of an event.
pub fn int(ev: &Value, key: &str) -> i64 {
    ev[key]
        .as_i64()
        .unwrap_or_else(|| panic!("event has no integer {key}: {ev}"))
}

/// A string field of an event; fails the test when it is missing.
pub fn text<'a>(ev: &'a Value, key: &str) -> &'a str {
    ev[key]
        .as_str()
        .unwrap_or_else(|| panic!("event has no string {key}: {ev}"))
}

/// The `args` of an exec event.
pub fn args(ev: &Value) -> Vec<String> {
    ev["args"]
        .as_array()
        .unwrap_or_else(|| panic!("event has no args array: {ev}"))
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap_or_else(|| panic!("non-string arg in {ev}"))
                .to_owned()
        })
        .collect()
}

/// The `flags` of an exec event (absent means none).
pub fn flags(ev: &Value) -> Vec<String> {
    ev["flags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `comm` as the kernel keeps it: at most 15 bytes.
pub fn comm_of(name: &str) -> String {
    name.chars().take(15).collect()
}

/// Calls `check` every 50 ms until it returns `Some`; fails the test with `what` and `diag()`
/// after `timeout`.
pub fn poll<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
    diag: impl Fn() -> String,
) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if started.elapsed() > timeout {
            panic!("waited {:?} for {what}; {}", started.elapsed(), diag());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_explicit_1_lets_root_tests_skip() {
        assert!(skip_allowed(Some(OsStr::new("1"))));
        for v in [None, Some(""), Some("0"), Some("yes"), Some("true")] {
            assert!(!skip_allowed(v.map(OsStr::new)), "{v:?}");
        }
    }

    #[test]
    fn nonces_differ_and_are_hex() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn helper_output_is_parsed() {
        let run = HelperRun {
            pid: 1,
            status: std::os::unix::process::ExitStatusExt::from_raw(0),
            stdout: "fd=3\nerrno=111\naddr=127.0.0.1\naddr=::1\nnoise\n".into(),
            stderr: String::new(),
        };
        assert_eq!(run.num::<i32>("fd"), 3);
        assert_eq!(run.all("addr"), vec!["127.0.0.1", "::1"]);
        assert_eq!(run.map().get("errno"), Some(&"111"));
    }

    #[test]
    fn comm_is_cut_at_15_bytes() {
        assert_eq!(comm_of("rmm-probe-helper"), "rmm-probe-helpe");
        assert_eq!(comm_of("true"), "true");
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_ns();
        assert!(monotonic_ns() >= a);
    }
}

/// One thread's capability sets and no_new_privs, as /proc/PID/task/TID/status shows them.
#[derive(Debug, Clone)]
pub struct ThreadCaps {
    pub tid: u32,
    pub name: String,
    pub eff: u64,
    pub prm: u64,
    pub inh: u64,
    pub amb: u64,
    pub bnd: u64,
    pub no_new_privs: bool,
}

/// Every thread of `pid` (a thread that exits meanwhile is skipped).
pub fn thread_caps(pid: u32) -> Vec<ThreadCaps> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("reading the tasks") {
        let e = e.expect("a task entry");
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {k} in {status}"))
                .to_owned()
        };
        let hex = |k: &str| u64::from_str_radix(&field(k), 16).expect("capability sets are hex");
        out.push(ThreadCaps {
            tid: e
                .file_name()
                .to_str()
                .and_then(|s| s.parse().ok())
                .expect("a tid"),
            name: field("Name:"),
            eff: hex("CapEff:"),
            prm: hex("CapPrm:"),
            inh: hex("CapInh:"),
            amb: hex("CapAmb:"),
            bnd: hex("CapBnd:"),
            no_new_privs: field("NoNewPrivs:") == "1",
        });
    }
    out
}

/// `exe ARGS` run as nobody (uid and gid 65534, no groups), once /proc shows it running `exe`.
pub fn spawn_as_nobody(exe: &Path, args: &[&str]) -> std::process::Child {
    let child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(exe)
        .args(args)
        .spawn()
        .unwrap_or_else(|e| panic!("setpriv {}: {e}", exe.display()));
    let pid = child.id();
    poll(
        &format!("{} running as nobody", exe.display()),
        std::time::Duration::from_secs(10),
        || (std::fs::read_link(format!("/proc/{pid}/exe")).ok()? == exe).then_some(()),
        String::new,
    );
    child
}
