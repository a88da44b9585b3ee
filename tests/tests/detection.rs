//! End-to-end detection tests: the real rmm-monitor with its embedded catalog against this
//! kernel. Harmless binaries (copies of /bin/true and /bin/sleep) are placed at vendor paths
//! and under vendor names, a real Debian VNC server is started, vendor names are looked up
//! against loopback DNS responders and vendor ports are connected to on loopback; the tests
//! assert on the fields of the alerts the daemon appends to its `--json` file, and on its
//! final detection stats.
//!
//! Every daemon gets its own alert file and an empty `--rules-dir`, so /etc is never read.
//! Silence (no alert for a look-alike) is always proven with a positive control sent after it:
//! once the control's alert is in the file, the earlier events were processed too; the file is
//! checked again after the daemon drained its rings and exited.
//!
//! Root only: without root each test prints `skipped: needs root` and returns.

mod detection {
    pub mod exec;
    pub mod network;
    pub mod rules;
}

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use rmm_tests::{HelperRun, Monitor, Stopped, TempDir, Value, monitor::event_timeout, text};

pub use rmm_tests::root_or_skip;

pub fn helper_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rmm-probe-helper"))
}

/// Runs the probe helper to completion (bounded); it must succeed.
pub fn helper(args: &[&str]) -> HelperRun {
    let run = rmm_tests::run_bounded(helper_bin(), args);
    run.assert_success();
    run
}

/// The helper's `comm` (its file name cut to 15 bytes).
pub fn helper_comm() -> String {
    rmm_tests::comm_of("rmm-probe-helper")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// The test process itself, as the parent of what it spawns.
pub fn own_exe() -> String {
    std::fs::read_link("/proc/self/exe")
        .expect("readlink /proc/self/exe")
        .to_string_lossy()
        .into_owned()
}

/// Runs a command to completion; it must exit 0. Returns its pid.
pub fn run_ok(cmd: &mut Command) -> u32 {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let pid = child.id();
    let status = child.wait().expect("waiting for the child");
    assert!(status.success(), "{cmd:?} failed: {status}");
    pid
}

/// A child killed and reaped on drop (a test that fails midway leaves nothing running).
pub struct Running(pub Child);

impl Running {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The JSON lines of an alert file; a partly written last line is left for the next read.
pub fn read_alerts(path: &Path) -> Vec<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading alert file {}: {e}", path.display()),
    };
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("alert line is not JSON ({e}): {l}"));
            assert!(v.is_object(), "alert line is not a JSON object: {l}");
            v
        })
        .collect()
}

/// Waits (bounded) until `n` alerts of `path` match `pred`; returns the first `n`.
pub fn wait_alerts_in(
    path: &Path,
    what: &str,
    n: usize,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let all = read_alerts(path);
        let hits: Vec<Value> = all.iter().filter(|a| pred(a)).take(n).cloned().collect();
        if hits.len() == n {
            return hits;
        }
        if started.elapsed() > event_timeout() {
            let lines: Vec<String> = all.iter().map(Value::to_string).collect();
            panic!(
                "waited {:?} for {n} alert(s) {what}, saw {}; the {} alerts in {}:\n{}",
                started.elapsed(),
                hits.len(),
                all.len(),
                path.display(),
                lines.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon started with `--config EMPTY_FILE --json FILE --rules-dir EMPTY_DIR` (plus
/// `extra`), in its own temporary directory that also holds the test's rules files and
/// binaries.
pub struct Daemon {
    pub m: Monitor,
    pub alerts: PathBuf,
    pub dir: TempDir,
}

/// What a stopped daemon left: its output, the alert file and the detection stats.
pub struct Finished {
    pub stopped: Stopped,
    pub alerts: Vec<Value>,
    pub detection: Value,
}

impl Daemon {
    /// A fresh directory `dir` (with an empty `rules.d`) for [`Daemon::start_in`].
    pub fn dir(tag: &str) -> TempDir {
        let dir = TempDir::new(&format!("det-{tag}"));
        std::fs::create_dir(dir.path().join("rules.d")).expect("mkdir rules.d");
        dir
    }

    pub fn start(tag: &str, extra: &[&str]) -> Daemon {
        Daemon::start_in(Daemon::dir(tag), extra)
    }

    pub fn start_in(dir: TempDir, extra: &[&str]) -> Daemon {
        let alerts = dir.path().join("alerts.json");
        let rules_dir = dir.path().join("rules.d");
        // An empty configuration file: /etc/rmm-monitor/config.toml is not read either.
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "").expect("writing an empty config.toml");
        let mut args = vec![
            "--config",
            path_str(&config),
            "--json",
            path_str(&alerts),
            "--rules-dir",
            path_str(&rules_dir),
        ];
        args.extend_from_slice(extra);
        let m = Monitor::start(&args);
        Daemon { m, alerts, dir }
    }

    pub fn all(&self) -> Vec<Value> {
        read_alerts(&self.alerts)
    }

    pub fn wait_alert(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_alerts_in(&self.alerts, what, 1, pred).remove(0)
    }

    /// The alert of `action` for process `pid` (the first one).
    pub fn alert_of(&self, action: &str, pid: u32) -> Value {
        self.wait_alert(&format!("{action} of pid {pid}"), |a| {
            a["event"]["action"] == action && a["process"]["pid"] == pid
        })
    }

    /// Waits for the raw event (`--events json`) of `kind` from `pid`: the daemon saw it.
    pub fn seen(&self, kind: &str, pid: u32) -> Value {
        self.m
            .wait_for(&format!("a {kind} event of pid {pid}"), |e| {
                e["event"] == kind && e["pid"] == pid
            })
    }

    pub fn stop(self) -> Finished {
        let stopped = self.m.stop();
        stopped.assert_clean();
        let alerts = read_alerts(&self.alerts);
        let detection = detection_stats(&stopped);
        // Every alert counted, and every alert counted printed.
        let counted: u64 = detection["alerts"]
            .as_object()
            .unwrap_or_else(|| panic!("no alerts map in {detection}"))
            .values()
            .map(|v| v.as_u64().expect("alert counts are numbers"))
            .sum();
        assert_eq!(
            counted,
            alerts.len() as u64,
            "final detection stats count every alert written: {detection}"
        );
        for a in &alerts {
            assert_common(a);
        }
        Finished {
            stopped,
            alerts,
            detection,
        }
    }
}

impl Finished {
    /// Alerts about process `pid`.
    pub fn of_pid(&self, pid: u32) -> Vec<&Value> {
        self.alerts
            .iter()
            .filter(|a| a["process"]["pid"] == pid)
            .collect()
    }

    pub fn count(&self, section: &str, tool: &str) -> u64 {
        self.detection[section][tool].as_u64().unwrap_or(0)
    }
}

/// The JSON of the `final detection stats: {..}` line.
pub fn detection_stats(stopped: &Stopped) -> Value {
    let line = stopped
        .stderr
        .iter()
        .rev()
        .find_map(|l| {
            l.split_once("final detection stats: ")
                .map(|(_, json)| json)
        })
        .unwrap_or_else(|| {
            panic!(
                "no `final detection stats:` line on stderr:\n{}",
                stopped.stderr.join("\n")
            )
        });
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("final detection stats are not JSON ({e}): {line}"))
}

pub const SEVERITIES: [&str; 4] = ["low", "medium", "high", "critical"];

/// ECS `event.severity` of a severity name.
pub fn score(severity: &str) -> u64 {
    match severity {
        "low" => 21,
        "medium" => 47,
        "high" => 73,
        "critical" => 99,
        other => panic!("unknown severity {other:?}"),
    }
}

/// `base` raised one step per context flag, capped at critical.
pub fn raised(base: &str, flags: usize) -> &'static str {
    let i = SEVERITIES
        .iter()
        .position(|s| *s == base)
        .unwrap_or_else(|| panic!("unknown severity {base:?}"));
    SEVERITIES[(i + flags).min(3)]
}

pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_owned()
        })
        .collect()
}

/// What every alert has, whatever its kind (ALERTS.md).
pub fn assert_common(a: &Value) {
    assert_eq!(a["event"]["kind"], "alert", "{a}");
    let ts = text(a, "@timestamp");
    assert!(
        ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "@timestamp is RFC 3339 UTC: {a}"
    );
    let action = a["event"]["action"]
        .as_str()
        .unwrap_or_else(|| panic!("no event.action: {a}"));
    let category = match action {
        "exec" | "inventory" => "process",
        "connect" | "dns_query" => "network",
        other => panic!("unknown event.action {other:?}: {a}"),
    };
    assert_eq!(strs(&a["event"]["category"]), vec![category], "{a}");
    let tool = a["rmm"]["tool"]
        .as_str()
        .unwrap_or_else(|| panic!("no rmm.tool: {a}"));
    let indicator = a["rmm"]["indicator"]
        .as_str()
        .unwrap_or_else(|| panic!("no rmm.indicator: {a}"));
    assert_eq!(
        a["rule"]["id"],
        format!("rmm.{tool}.{indicator}"),
        "rule.id: {a}"
    );
    assert!(
        a["rule"]["name"].as_str().is_some_and(|n| !n.is_empty()),
        "rule.name: {a}"
    );
    assert!(
        a["rmm"]["tool_name"]
            .as_str()
            .is_some_and(|n| !n.is_empty()),
        "rmm.tool_name: {a}"
    );
    assert!(
        a["rmm"]["matched"].as_str().is_some_and(|n| !n.is_empty()),
        "rmm.matched: {a}"
    );
    let sev = a["rmm"]["severity"]
        .as_str()
        .unwrap_or_else(|| panic!("no rmm.severity: {a}"));
    assert_eq!(
        a["event"]["severity"].as_u64(),
        Some(score(sev)),
        "event.severity is rmm.severity's score: {a}"
    );
    assert!(
        a["rmm"]["count"].as_u64().is_some_and(|c| c >= 1),
        "rmm.count: {a}"
    );
    assert!(
        a["rmm"]["references"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "rmm.references: {a}"
    );
    let ancestors = a["rmm"]["ancestors"]
        .as_array()
        .unwrap_or_else(|| panic!("no rmm.ancestors: {a}"));
    assert!(ancestors.len() <= 8, "at most 8 ancestors: {a}");
    if let Some(first) = ancestors.first() {
        assert_eq!(
            a["process"]["parent"]["pid"], first["pid"],
            "process.parent is the first ancestor: {a}"
        );
    }
    assert_eq!(a["threat"]["framework"], "MITRE ATT&CK", "{a}");
    let technique = text(&a["threat"]["technique"], "id");
    assert!(
        matches!(technique, "T1219" | "T1219.002"),
        "threat.technique.id: {a}"
    );
    assert!(
        a["threat"]["technique"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty()),
        "threat.technique.name: {a}"
    );
    assert!(a["process"]["pid"].as_u64().is_some(), "process.pid: {a}");
    assert!(
        a["host"]["hostname"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "host.hostname is set: {a}"
    );
    let has_dest = !a["destination"].is_null();
    assert_eq!(
        has_dest,
        category == "network",
        "destination on network alerts only: {a}"
    );
    assert_eq!(
        !a["dns"].is_null(),
        action == "dns_query",
        "dns on dns_query alerts only: {a}"
    );
    assert_eq!(
        !a["event"]["outcome"].is_null(),
        action == "connect",
        "event.outcome on connects only: {a}"
    );
}

/// The catalog match of an alert.
pub fn assert_match(a: &Value, tool: &str, indicator: &str, matched: &str, action: &str) {
    assert_common(a);
    assert_eq!(
        (
            text(&a["rmm"], "tool"),
            text(&a["rmm"], "indicator"),
            text(&a["rmm"], "matched"),
            text(&a["event"], "action"),
        ),
        (tool, indicator, matched, action),
        "rmm.tool, rmm.indicator, rmm.matched, event.action: {a}"
    );
}

/// The context flags an alert of the probe helper carries: it is never packaged, and it runs
/// from a temp dir when the workspace itself lives in one (a clone under /tmp).
pub fn helper_flags() -> Vec<&'static str> {
    let exe = helper_bin().to_string_lossy().into_owned();
    let in_temp = ["/tmp/", "/var/tmp/", "/dev/shm/"]
        .iter()
        .any(|d| exe.starts_with(d))
        || (exe.contains("/Downloads/")
            && (exe.starts_with("/home/") || exe.starts_with("/root/")));
    if in_temp {
        vec!["temp_dir", "not_packaged"]
    } else {
        vec!["not_packaged"]
    }
}

/// The context flags (as a set) and the severity they raise `base` to.
pub fn assert_context(a: &Value, base: &str, flags: &[&str], technique: &str) {
    let got: BTreeSet<String> = strs(&a["rmm"]["context"]).into_iter().collect();
    let want: BTreeSet<String> = flags.iter().map(|f| (*f).to_owned()).collect();
    assert_eq!(got, want, "rmm.context: {a}");
    let sev = raised(base, flags.len());
    assert_eq!(a["rmm"]["severity"], sev, "rmm.severity: {a}");
    assert_eq!(a["event"]["severity"].as_u64(), Some(score(sev)), "{a}");
    assert_eq!(a["threat"]["technique"]["id"], technique, "{a}");
}

/// Like [`assert_context`], for alerts whose process may be missing from the daemon's table
/// (see `network_alerts_of_short_lived_processes_carry_the_process_context`): the flags are
/// some of `flags`, and the severity is raised once per flag present.
pub fn assert_context_within(a: &Value, base: &str, flags: &[&str], technique: &str) {
    let got = strs(&a["rmm"]["context"]);
    assert!(
        got.iter().all(|f| flags.contains(&f.as_str())),
        "rmm.context {got:?} is within {flags:?}: {a}"
    );
    let sev = raised(base, got.len());
    assert_eq!(a["rmm"]["severity"], sev, "rmm.severity: {a}");
    assert_eq!(a["event"]["severity"].as_u64(), Some(score(sev)), "{a}");
    assert_eq!(a["threat"]["technique"]["id"], technique, "{a}");
}

/// The process of an alert as the event itself tells it: pid, name (the event's comm), uid.
pub fn assert_event_process(a: &Value, pid: u32, name: &str) {
    let p = &a["process"];
    assert_eq!(p["pid"], pid, "process.pid: {a}");
    assert_eq!(p["name"], name, "process.name: {a}");
    assert_eq!(p["user"]["id"], 0, "process.user.id: {a}");
}

/// The process of an alert: pid, name (comm), executable, and the parent when given.
pub fn assert_process(a: &Value, pid: u32, name: &str, exe: &str, parent: Option<(u32, &str)>) {
    let p = &a["process"];
    assert_eq!(p["pid"], pid, "process.pid: {a}");
    assert_eq!(p["name"], name, "process.name: {a}");
    assert_eq!(p["executable"], exe, "process.executable: {a}");
    assert_eq!(p["user"]["id"], 0, "process.user.id: {a}");
    let id = p["entity_id"].as_str().unwrap_or_default();
    assert!(
        id.contains(&format!(":{pid}:")) && p["start"].is_string(),
        "process.entity_id and process.start name the process: {a}"
    );
    if let Some((ppid, pexe)) = parent {
        assert_eq!(p["parent"]["pid"], ppid, "process.parent.pid: {a}");
        assert_eq!(
            p["parent"]["executable"], pexe,
            "process.parent.executable: {a}"
        );
    }
}

/// `process.entity_id` of a live process is `<boot id>:<pid>:<start>`, the start being field
/// 22 of `/proc/PID/stat` (clock ticks since boot), and `process.start` that instant.
pub fn assert_identity(p: &Value, pid: u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("pid {pid} must be alive here: {e}"));
    let after_comm = &stat[stat.rfind(')').expect("stat has a comm") + 1..];
    let ticks = after_comm
        .split_whitespace()
        .nth(19)
        .expect("stat has a start time");
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    assert_eq!(
        p["entity_id"].as_str().unwrap_or_default(),
        format!("{}:{pid}:{ticks}", boot_id.trim()),
        "entity_id of pid {pid}: {p}"
    );
    let start = humantime::parse_rfc3339(p["start"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("process.start of pid {pid}: {e}: {p}"));
    let age = std::time::SystemTime::now()
        .duration_since(start)
        .unwrap_or_else(|e| panic!("process.start of pid {pid} is in the future: {e}: {p}"));
    assert!(
        age < Duration::from_secs(24 * 3600),
        "process.start of pid {pid}: {p}"
    );
}
