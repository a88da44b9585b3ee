//! The daemon in its container (`cargo xtask image`, run as `deploy/container/README.md`
//! says: host PID and cgroup namespaces, the cgroup v2 root and tracefs read-only, five
//! capabilities, the shipped seccomp profile, read-only root file system, not privileged)
//! watching a second, ordinary container: an AnyDesk-named binary runs in it and a vendor
//! domain is looked up from it (a raw UDP query to a loopback responder in the host network
//! namespace), and both alerts must name that container (`container.id` as podman reports it,
//! `container.runtime: podman`).
//!
//! The alerts are read from a JSON file in a bind-mounted host directory, not from the
//! container's stdout: the daemon's processor thread holds the stdout lock for its whole life
//! (`rmm-userspace/src/daemon.rs`), so a `--json -` sink gets its alerts out only at shutdown.
//!
//! Needs root and podman with runc (`cargo xtask setup`), and the image (`RMM_IMAGE`, default
//! `localhost/rmm-monitor:dev`, made by `cargo xtask image`). Every container and image the
//! tests create is removed on drop, also when a test fails; the monitor image is kept.
//!
//! Podman is configured by a `containers.conf` written here (unless `CONTAINERS_CONF` is set):
//! runc with the cgroupfs manager (crun refuses hybrid cgroup layouts; cgroupfs needs no
//! systemd), no default ulimits (setting them needs CAP_SYS_RESOURCE, which sandboxed CI
//! lacks) and a file events log (no journald needed).

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rmm_tests::{
    TempDir, Value,
    monitor::{event_timeout, ready_timeout, stop_timeout},
    nonce,
    responder::Responder,
};

/// How long one podman command may take (an image import, a container start).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// The loopback resolver the second container queries (unused by the other test binaries).
const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 161);

/// The capabilities the monitor container gets, and nothing else (README: why each).
const MONITOR_CAPS: &[&str] = &[
    "BPF",
    "PERFMON",
    "NET_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
];

/// One monitor container at a time in this binary.
static SERIAL: Mutex<()> = Mutex::new(());

fn monitor_image() -> String {
    std::env::var("RMM_IMAGE").unwrap_or_else(|_| "localhost/rmm-monitor:dev".into())
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn seccomp_profile() -> PathBuf {
    let p = workspace().join("deploy/container/seccomp.json");
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Runs podman with this test's configuration.
struct Podman {
    conf: PathBuf,
    _dir: Option<TempDir>,
}

impl Podman {
    /// Fails the test when podman is missing or the monitor image is not there.
    fn new() -> Podman {
        let (conf, dir) = match std::env::var_os("CONTAINERS_CONF") {
            Some(c) => (PathBuf::from(c), None),
            None => {
                let dir = TempDir::new("ct-conf");
                let conf = dir.path().join("containers.conf");
                std::fs::write(
                    &conf,
                    "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n\
                     cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
                )
                .expect("writing containers.conf");
                (conf, Some(dir))
            }
        };
        let p = Podman { conf, _dir: dir };
        let v = Command::new("podman")
            .arg("--version")
            .output()
            .unwrap_or_else(|e| {
                panic!("podman is not installed ({e}): `cargo xtask setup` (apt-get install podman runc)")
            });
        assert!(v.status.success(), "podman --version failed: {v:?}");
        let image = monitor_image();
        let exists = p.run(&["image", "exists", &image]);
        assert!(
            exists.status.success(),
            "the monitor image {image} is missing: run `cargo xtask image` (or set RMM_IMAGE)"
        );
        p
    }

    fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf);
        c
    }

    /// Runs `podman ARGS` to completion (bounded), whatever its status.
    fn run(&self, args: &[&str]) -> Output {
        let child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting podman {args:?}: {e}"));
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(PODMAN_TIMEOUT) {
            Ok(out) => out.unwrap_or_else(|e| panic!("waiting for podman {args:?}: {e}")),
            Err(_) => {
                // SAFETY: kill(2); the child is not reaped until wait_with_output returns.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                panic!("podman {args:?} did not finish within {PODMAN_TIMEOUT:?}");
            }
        }
    }

    /// Runs `podman ARGS`, which must succeed; returns its trimmed stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["container", "inspect", "--format", format, name])
    }
}

/// An image imported by a test, removed on drop.
struct ImageGuard<'a>(&'a Podman, String);

impl Drop for ImageGuard<'_> {
    fn drop(&mut self) {
        let out = self.0.run(&["image", "rm", "--force", &self.1]);
        if !out.status.success() {
            eprintln!(
                "could not remove image {}: {}",
                self.1,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A container created by a test, removed (killed first) on drop.
struct ContainerGuard<'a>(&'a Podman, String);

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        let out = self
            .0
            .run(&["container", "rm", "--force", "--time", "0", &self.1]);
        if !out.status.success() {
            eprintln!(
                "could not remove container {}: {}",
                self.1,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The files `ldd` names for `binary` (the vDSO has none).
fn libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap_or_else(|e| panic!("ldd {}: {e}", binary.display()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let target = l.split_once("=>").map_or(l, |(_, t)| t).trim();
            assert!(!target.starts_with("not found"), "ldd: {l}");
            let path = target.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `src` to `rootfs/dst`, executable.
fn put(rootfs: &Path, src: &Path, dst: &str) {
    use std::os::unix::fs::PermissionsExt;
    let to = rootfs.join(dst.trim_start_matches('/'));
    std::fs::create_dir_all(to.parent().expect("a parent directory")).expect("mkdir -p");
    std::fs::copy(src, &to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), to.display()));
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Imports a tiny image: `/usr/bin/anydesk` (a copy of sleep: an RMM tool by path and name)
/// and the probe helper (raw DNS queries to a loopback resolver), with their libraries.
fn tool_image<'a>(podman: &'a Podman, tag: &str) -> ImageGuard<'a> {
    let dir = TempDir::new("ct-tool");
    let rootfs = dir.path().join("rootfs");
    let helper = Path::new(env!("CARGO_BIN_EXE_rmm-probe-helper"));
    let sleep = Path::new("/bin/sleep");
    put(&rootfs, sleep, "/usr/bin/anydesk");
    put(&rootfs, helper, "/usr/bin/rmm-probe-helper");
    for lib in libraries(sleep).into_iter().chain(libraries(helper)) {
        put(&rootfs, &lib, path_str(&lib));
    }
    let tar = dir.path().join("rootfs.tar");
    let status = Command::new("tar")
        .args(["--create", "--numeric-owner", "--owner=0", "--group=0"])
        .arg("--file")
        .arg(&tar)
        .arg("--directory")
        .arg(&rootfs)
        .arg(".")
        .status()
        .expect("running tar");
    assert!(status.success(), "tar failed: {status}");
    let name = format!("localhost/rmm-e2e-tool:{tag}");
    podman.ok(&["import", "--quiet", path_str(&tar), &name]);
    ImageGuard(podman, name)
}

/// Where the monitor container writes its alerts (a host directory is mounted there).
const ALERT_DIR: &str = "/var/log/rmm-monitor";

/// The monitor container's flags, as deploy/container/README.md documents them (minus the
/// optional journald socket and host files): every host view it needs and nothing more, plus
/// the host directory `alerts` for its alert file.
fn monitor_flags(name: &str, seccomp: &str, alerts: &Path) -> Vec<String> {
    let cgroup2 = rmm_tests::cgroup2_root();
    let cg = path_str(&cgroup2);
    let mut flags: Vec<String> = [
        "--rm",
        "--name",
        name,
        "--pid=host",
        "--cgroupns=host",
        "--uts=host",
        "--network=none",
        "--read-only",
        "--read-only-tmpfs=false",
        "--cap-drop=all",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    flags.push(format!("--cap-add={}", MONITOR_CAPS.join(",")));
    flags.extend(
        [
            "--security-opt",
            &format!("seccomp={seccomp}"),
            "--security-opt",
            "no-new-privileges",
            "--volume",
            &format!("{cg}:{cg}:ro"),
            "--volume",
            "/sys/kernel/tracing:/sys/kernel/tracing:ro",
            "--volume",
            &format!("{}:{ALERT_DIR}", path_str(alerts)),
            "--memory=256m",
            "--pids-limit=64",
            "--stop-timeout=20",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    flags
}

/// Lines of one pipe, shared with the thread that reads them.
#[derive(Default)]
struct Lines {
    state: Mutex<(Vec<String>, bool)>,
    cond: Condvar,
}

impl Lines {
    fn read(pipe: impl std::io::Read + Send + 'static, lines: Arc<Lines>) -> JoinHandle<()> {
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines() {
                let Ok(l) = l else { break };
                lines.state.lock().expect("lock").0.push(l);
                lines.cond.notify_all();
            }
            lines.state.lock().expect("lock").1 = true;
            lines.cond.notify_all();
        })
    }

    fn snapshot(&self) -> Vec<String> {
        self.state.lock().expect("lock").0.clone()
    }

    /// Waits until `check` finds something; `Err(closed)` at the deadline or end of pipe.
    fn wait<R>(
        &self,
        timeout: Duration,
        check: impl Fn(&[String]) -> Option<R>,
    ) -> Result<R, bool> {
        let deadline = Instant::now() + timeout;
        let mut g = self.state.lock().expect("lock");
        loop {
            if let Some(r) = check(&g.0) {
                return Ok(r);
            }
            if g.1 {
                return Err(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(false);
            }
            g = self.cond.wait_timeout(g, deadline - now).expect("lock").0;
        }
    }
}

/// The message of an env_logger line.
fn message(line: &str) -> &str {
    line.split_once("] ").map_or(line, |(_, m)| m)
}

/// `podman run` of the monitor image, attached: stdout and stderr (the log) are read on
/// threads; the alerts go to `alerts.json` in a host directory.
struct MonitorContainer<'a> {
    podman: &'a Podman,
    name: String,
    dir: TempDir,
    child: Child,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    threads: Vec<JoinHandle<()>>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl<'a> MonitorContainer<'a> {
    fn spawn(podman: &'a Podman, seccomp: &str) -> MonitorContainer<'a> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("rmm-e2e-monitor-{}", nonce());
        let dir = TempDir::new("ct-alerts");
        let mut child = podman
            .command()
            .arg("run")
            .args(monitor_flags(&name, seccomp, dir.path()))
            .arg(monitor_image())
            .args(["run", "--json", &format!("{ALERT_DIR}/alerts.json")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting podman run");
        let (stdout, stderr) = (Arc::new(Lines::default()), Arc::new(Lines::default()));
        let threads = vec![
            Lines::read(child.stdout.take().expect("piped"), stdout.clone()),
            Lines::read(child.stderr.take().expect("piped"), stderr.clone()),
        ];
        MonitorContainer {
            podman,
            name,
            dir,
            child,
            stdout,
            stderr,
            threads,
            _serial: serial,
        }
    }

    /// Starts the monitor and waits for its `ready` line; fails the test otherwise.
    fn start(podman: &'a Podman) -> MonitorContainer<'a> {
        let m = MonitorContainer::spawn(podman, path_str(&seccomp_profile()));
        let started = Instant::now();
        let ready = m.stderr.wait(ready_timeout(), |lines| {
            lines
                .iter()
                .any(|l| message(l).starts_with("ready"))
                .then_some(())
        });
        if let Err(closed) = ready {
            panic!(
                "the monitor container {} ({:?} after start); its stderr:\n{}",
                if closed {
                    "exited before logging `ready`"
                } else {
                    "did not log `ready` in time"
                },
                started.elapsed(),
                m.stderr.snapshot().join("\n")
            );
        }
        m
    }

    /// The complete lines of the alert file (a partly written last line waits for the next read).
    fn alerts(&self) -> Vec<Value> {
        let path = self.dir.path().join("alerts.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("reading {}: {e}", path.display()),
        };
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        complete
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("alert line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Waits (bounded) for the first alert matching `pred`; fails the test otherwise.
    fn wait_alert(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let all = self.alerts();
            if let Some(a) = all.iter().find(|a| pred(a)) {
                return a.clone();
            }
            let exited = self.stderr.state.lock().expect("lock").1;
            if exited || started.elapsed() > event_timeout() {
                let lines: Vec<String> = all.iter().map(Value::to_string).collect();
                panic!(
                    "no alert {what} after {:?}{}; the {} alerts:\n{}\nmonitor stderr:\n{}\n\
                     monitor stdout:\n{}",
                    started.elapsed(),
                    if exited { " (the monitor exited)" } else { "" },
                    lines.len(),
                    lines.join("\n"),
                    self.stderr.snapshot().join("\n"),
                    self.stdout.snapshot().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `podman stop` (SIGTERM): the daemon drains and exits 0 with its final stats.
    /// Returns the alerts and the log.
    fn stop(mut self) -> (Vec<Value>, Vec<String>) {
        self.podman.ok(&[
            "stop",
            "--time",
            &stop_timeout().as_secs().to_string(),
            &self.name,
        ]);
        let deadline = Instant::now() + stop_timeout();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("waiting for podman run") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "podman run did not return within {:?} of podman stop",
                stop_timeout()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        for t in self.threads.drain(..) {
            t.join().expect("pipe reader");
        }
        let stderr = self.stderr.snapshot();
        assert_eq!(
            status.code(),
            Some(0),
            "monitor container exit status; stderr:\n{}",
            stderr.join("\n")
        );
        assert!(
            stderr
                .iter()
                .any(|l| message(l).starts_with("final stats: ")),
            "no final stats after SIGTERM; stderr:\n{}",
            stderr.join("\n")
        );
        (self.alerts(), stderr)
    }
}

impl Drop for MonitorContainer<'_> {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self
                .podman
                .run(&["container", "rm", "--force", "--time", "0", &self.name]);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn alerts_from_another_container_carry_its_id() {
    if !rmm_tests::require_root("alerts_from_another_container_carry_its_id") {
        return;
    }
    let started = Instant::now();
    let podman = Podman::new();
    let tag = nonce();
    let image = tool_image(&podman, &tag);
    let responder = Responder::bind(SocketAddr::from((RESOLVER, 53)))
        .unwrap_or_else(|e| panic!("binding the DNS responder on {RESOLVER}:53: {e}"));

    let monitor = MonitorContainer::start(&podman);
    // The monitor runs exactly as configured: not privileged, five capabilities, read-only.
    let caps = podman.inspect(&monitor.name, "{{.EffectiveCaps}}");
    let mut want: Vec<String> = MONITOR_CAPS.iter().map(|c| format!("CAP_{c}")).collect();
    want.sort();
    let mut got: Vec<String> = caps
        .trim_matches(|c| c == '[' || c == ']')
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    got.sort();
    assert_eq!(got, want, "the monitor container's capabilities");
    assert_eq!(
        podman.inspect(
            &monitor.name,
            "{{.HostConfig.Privileged}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.PidMode}}"
        ),
        "false true host"
    );

    // The second container: an RMM tool by path and name, in the host network namespace.
    let tool_name = format!("rmm-e2e-tool-{tag}");
    let tool_id = podman.ok(&[
        "run",
        "--detach",
        "--name",
        &tool_name,
        "--network=host",
        "--cap-drop=all",
        &image.1,
        "/usr/bin/anydesk",
        "120",
    ]);
    let _tool = ContainerGuard(&podman, tool_name.clone());
    assert_eq!(
        podman.inspect(&tool_name, "{{.Id}}"),
        tool_id,
        "podman run -d prints the full container id"
    );
    assert!(
        tool_id.len() == 64 && tool_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "container id {tool_id:?}"
    );
    let tool_pid: u32 = podman
        .inspect(&tool_name, "{{.State.Pid}}")
        .parse()
        .expect("State.Pid is a number");
    let cgroup = std::fs::read_to_string(format!("/proc/{tool_pid}/cgroup")).unwrap_or_default();

    let qname = format!("{tag}.anydesk.com");
    let out = podman.ok(&[
        "exec",
        &tool_name,
        "/usr/bin/rmm-probe-helper",
        "dns-sendto",
        &RESOLVER.to_string(),
        &qname,
        "A",
    ]);
    assert!(out.contains("txid="), "probe helper output: {out}");
    responder.wait_received(&format!("the query for {qname}"), |r| r.name == qname);

    let context = format!("(container {tool_id}, pid {tool_pid}, cgroup {cgroup:?})");
    let exec = monitor.wait_alert(&format!("exec of /usr/bin/anydesk {context}"), |a| {
        a["event"]["action"] == "exec" && a["process"]["pid"] == tool_pid
    });
    let dns = monitor.wait_alert(&format!("dns_query of {qname} {context}"), |a| {
        a["event"]["action"] == "dns_query" && a["dns"]["question"]["name"] == qname.as_str()
    });
    for (what, a) in [("exec", &exec), ("dns_query", &dns)] {
        assert_eq!(a["container"]["id"], tool_id.as_str(), "{what} alert: {a}");
        assert_eq!(a["container"]["runtime"], "podman", "{what} alert: {a}");
        assert_eq!(a["rmm"]["tool"], "anydesk", "{what} alert: {a}");
        assert!(
            strs(&a["rmm"]["context"]).contains(&"container".to_owned()),
            "{what} alert lacks the container context flag: {a}"
        );
        // --uts=host: the host's name, not the monitor container's.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
        assert_eq!(a["host"]["hostname"], host.trim(), "{what} alert: {a}");
    }
    assert_eq!(exec["process"]["executable"], "/usr/bin/anydesk", "{exec}");
    assert_eq!(exec["process"]["name"], "anydesk", "{exec}");
    assert_eq!(
        dns["process"]["executable"], "/usr/bin/rmm-probe-helper",
        "{dns}"
    );
    assert_eq!(dns["rmm"]["indicator"], "domain", "{dns}");
    assert_eq!(dns["destination"]["ip"], RESOLVER.to_string(), "{dns}");
    assert_eq!(dns["destination"]["port"], 53, "{dns}");

    let (alerts, _stderr) = monitor.stop();
    // Every alert about the second container's processes carries its id.
    for a in alerts.iter().filter(|a| {
        a["process"]["pid"] == tool_pid || a["dns"]["question"]["name"] == qname.as_str()
    }) {
        assert_eq!(a["container"]["id"], tool_id.as_str(), "{a}");
    }
    eprintln!(
        "container test: monitor in its container saw both alerts of container {} in {:?}",
        &tool_id[..12],
        started.elapsed()
    );
}

/// Why `deploy/container/seccomp.json` exists: podman's default profile lets bpf(2) and
/// perf_event_open(2) through only with CAP_SYS_ADMIN, so with CAP_BPF and CAP_PERFMON alone
/// the daemon is refused (EPERM) at its first bpf(2) (creating a map). Should a podman release
/// allow both with CAP_BPF/CAP_PERFMON, this test fails and the shipped profile can go.
#[test]
fn default_seccomp_profile_refuses_bpf_without_cap_sys_admin() {
    if !rmm_tests::require_root("default_seccomp_profile_refuses_bpf_without_cap_sys_admin") {
        return;
    }
    let podman = Podman::new();
    let default = Path::new("/usr/share/containers/seccomp.json");
    assert!(
        default.is_file(),
        "podman's default profile {} is missing",
        default.display()
    );
    let m = MonitorContainer::spawn(&podman, path_str(default));
    let failed = m.stderr.wait(ready_timeout(), |lines| {
        lines
            .iter()
            .find(|l| message(l).starts_with("ready") || l.contains("ERROR"))
            .cloned()
    });
    let line = failed.unwrap_or_else(|closed| {
        panic!(
            "the monitor neither failed nor got ready (closed: {closed}); stderr:\n{}",
            m.stderr.snapshot().join("\n")
        )
    });
    assert!(
        line.contains("Operation not permitted"),
        "with podman's default seccomp profile the daemon should be refused (EPERM) at its \
         first bpf(2) or perf_event_open(2); it logged: {line}\nIf this podman allows them \
         with CAP_BPF and CAP_PERFMON, deploy/container/seccomp.json is no longer needed."
    );
}
