//! End-to-end delivery tests: the real rmm-monitor sends real alerts to real services on this
//! machine and the tests read them back where an operator would: journald (`journalctl -o json`),
//! an rsyslogd started by the test with its own configuration (UDP, TCP with octet counting, TLS
//! with the gtls driver), JSON files (with a logrotate-style rename and SIGHUP), and the
//! Prometheus endpoint. They also check the daemon's own accounting: `final sink stats` against
//! `final detection stats`, across a syslog server crash and restart and against a server that
//! never answers.
//!
//! Alerts are triggered the way the detection tests do it: a copy of /bin/true named `anydesk`
//! in a directory unique to the test (tool anydesk, indicator binary), and a TCP connect from
//! this test process to 127.0.0.1:5938 (tool teamviewer, indicator port). Each test matches the
//! alerts it caused by executable path or pid, so activity of other processes on the machine
//! (other test suites alert too) never confuses it.
//!
//! Every daemon gets an empty `--config` file and an empty `--rules-dir`, so nothing under /etc is
//! read. Every service a test starts (rsyslogd, journald when none runs) is stopped by a guard,
//! also when the test fails. rsyslogd never reads /etc/rsyslog.conf: it runs with
//! `-n -f CONF -i PIDFILE`, its own work directory, free loopback ports and output files under a
//! temporary directory.
//!
//! Needs root (the daemon loads eBPF programs) and the Debian packages `rsyslog`,
//! `rsyslog-gnutls`, `openssl` and `systemd` (journald, journalctl). Without root each test
//! prints `skipped: needs root` and returns.

mod delivery {
    pub mod config;
    pub mod full_disk;
    pub mod journald;
    pub mod metrics;
    pub mod outage;
    pub mod services;
    pub mod syslog;
}

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use rmm_tests::{Monitor, Stopped, TempDir, Value};

pub use rmm_tests::root_or_skip;

/// How long an alert may take to reach a file, a syslog server or the journal.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// The test process's executable (the process of the connect alerts).
pub fn own_exe() -> String {
    std::fs::read_link("/proc/self/exe")
        .expect("readlink /proc/self/exe")
        .to_string_lossy()
        .into_owned()
}

pub use rmm_tests::poll;

/// A test's scratch directory: an empty `config.toml` (so /etc/rmm-monitor/config.toml is never
/// read), an empty `rules.d` (so /etc/rmm-monitor/rules.d is never read), and room for alert
/// files, rules and the binaries that trigger alerts.
pub struct Scratch {
    dir: TempDir,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = TempDir::new(&format!("dlv-{tag}"));
        std::fs::create_dir(dir.path().join("rules.d")).expect("mkdir rules.d");
        std::fs::write(dir.path().join("config.toml"), "").expect("writing config.toml");
        Scratch { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn rules_dir(&self) -> PathBuf {
        self.file("rules.d")
    }

    /// `rmm-monitor run --events json --config EMPTY --rules-dir EMPTY EXTRA..`, once ready.
    pub fn start(&self, extra: &[&str]) -> Monitor {
        let config = self.file("config.toml");
        let rules = self.rules_dir();
        let mut args = vec![
            "--config",
            path_str(&config),
            "--rules-dir",
            path_str(&rules),
        ];
        args.extend_from_slice(extra);
        Monitor::start(&args)
    }

    /// Copies `src` to `SCRATCH/bin/SUB/NAME` (mode 0755) and runs it to completion; returns
    /// its path and pid.
    pub fn run_copy(&self, src: &str, sub: &str, name: &str) -> (PathBuf, u32) {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.file("bin").join(sub);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let exe = dir.join(name);
        std::fs::copy(src, &exe).unwrap_or_else(|e| panic!("copy {src}: {e}"));
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", exe.display()));
        let mut child = Command::new(&exe)
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
        let pid = child.id();
        let status = child.wait().expect("waiting for the child");
        assert!(status.success(), "{} failed: {status}", exe.display());
        (exe, pid)
    }

    /// An `anydesk` (a copy of /bin/true) in its own directory `SUB`, run once: one exec alert
    /// (tool anydesk, indicator binary, critical: temp_dir and not_packaged).
    pub fn anydesk(&self, sub: &str) -> (PathBuf, u32) {
        self.run_copy("/bin/true", sub, "anydesk")
    }
}

/// A TCP connect from this process to 127.0.0.1:5938 (TeamViewer's port): one connect alert for
/// this process (once per daemon: repeats from the same pid are de-duplicated). Returns our pid.
pub fn connect_teamviewer() -> u32 {
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, 5938));
    // Refused unless something listens there; either way the connect is seen.
    drop(TcpStream::connect_timeout(&to, Duration::from_secs(2)));
    std::process::id()
}

/// A loopback port free for both TCP and UDP right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a TCP port");
        let port = tcp.local_addr().expect("local address").port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both TCP and UDP");
}

/// Two distinct free ports.
pub fn two_ports() -> (u16, u16) {
    let a = free_port();
    loop {
        let b = free_port();
        if b != a {
            return (a, b);
        }
    }
}

/// The JSON lines of a file (an alert file or an rsyslog output file); a partly written last
/// line is left for the next read, a missing file is empty.
pub fn json_lines(path: &Path) -> Vec<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    };
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("line of {} is not JSON ({e}): {l}", path.display()));
            assert!(
                v.is_object(),
                "line of {} is not an object: {l}",
                path.display()
            );
            v
        })
        .collect()
}

/// Does alert `a` stand for the exec of `exe`?
pub fn is_exec_of(a: &Value, exe: &Path) -> bool {
    a["event"]["action"] == "exec" && a["process"]["executable"] == path_str(exe)
}

/// Does alert `a` stand for a connect to 5938 by `pid`?
pub fn is_connect_of(a: &Value, pid: u32) -> bool {
    a["event"]["action"] == "connect"
        && a["process"]["pid"] == pid
        && a["destination"]["port"] == 5938
}

/// Waits until an alert of the JSON file `path` matches `pred`; returns it.
pub fn wait_alert(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    poll(
        &format!("an alert {what} in {}", path.display()),
        DELIVERY_TIMEOUT,
        || json_lines(path).into_iter().find(|a| pred(a)),
        || {
            let lines: Vec<String> = json_lines(path).iter().map(Value::to_string).collect();
            format!("the file holds:\n{}", lines.join("\n"))
        },
    )
}

/// The JSON after `prefix` on the daemon's last stderr line that has it.
fn logged_json(stopped: &Stopped, prefix: &str) -> Value {
    let line = stopped
        .stderr
        .iter()
        .rev()
        .find_map(|l| l.split_once(prefix).map(|(_, json)| json))
        .unwrap_or_else(|| {
            panic!(
                "no `{prefix}` line on stderr:\n{}",
                stopped.stderr.join("\n")
            )
        });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("`{prefix}` is not JSON ({e}): {line}"))
}

/// Alerts raised in all, from `final detection stats` (per tool, summed).
pub fn alerts_raised(stopped: &Stopped) -> u64 {
    let d = logged_json(stopped, "final detection stats: ");
    d["alerts"]
        .as_object()
        .unwrap_or_else(|| panic!("no alerts map in the detection stats: {d}"))
        .values()
        .map(|v| v.as_u64().expect("alert counts are numbers"))
        .sum()
}

/// One sink's counters from `final sink stats`, by its name (`json:PATH`, `journald`,
/// `syslog:URL`), as name -> value.
pub fn sink_stats(stopped: &Stopped, name: &str) -> BTreeMap<String, u64> {
    let all = logged_json(stopped, "final sink stats: ");
    let sink = all
        .as_array()
        .unwrap_or_else(|| panic!("final sink stats are not a list: {all}"))
        .iter()
        .find(|s| s["sink"] == name)
        .unwrap_or_else(|| panic!("no sink {name:?} in the final sink stats: {all}"));
    let mut out = BTreeMap::new();
    for k in [
        "delivered",
        "delivered_late",
        "dropped",
        "errors",
        "reconnects",
    ] {
        let v = sink[k]
            .as_u64()
            .unwrap_or_else(|| panic!("sink {name:?} has no counter {k}: {all}"));
        out.insert(k.to_owned(), v);
    }
    out
}

/// The names of the sinks in `final sink stats`, in order.
pub fn sink_names(stopped: &Stopped) -> Vec<String> {
    let all = logged_json(stopped, "final sink stats: ");
    all.as_array()
        .unwrap_or_else(|| panic!("final sink stats are not a list: {all}"))
        .iter()
        .map(|s| s["sink"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The sink that got every alert and had no trouble: delivered == raised, nothing else.
pub fn assert_sink_perfect(stopped: &Stopped, name: &str) {
    let raised = alerts_raised(stopped);
    let s = sink_stats(stopped, name);
    assert_eq!(
        (s["delivered"], s["dropped"], s["errors"]),
        (raised, 0, 0),
        "sink {name}: (delivered, dropped, errors) against {raised} alerts raised: {s:?}"
    );
}

/// Sends `signal` to the daemon.
pub fn signal(m: &Monitor, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(m.pid()).expect("pid fits pid_t");
    // SAFETY: kill(2) on our own child, which is still running (not reaped).
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}
