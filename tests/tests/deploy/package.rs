//! The Debian package built by `cargo xtask package`: installed with dpkg, its unit verified and
//! rated by systemd-analyze, the installed daemon started the way the unit starts it, an alert
//! read back from journald, reload and stop through the unit's signals, then purged without a
//! trace. A guard purges the package whatever happens to the test.

use std::{
    io::{BufRead, BufReader},
    os::unix::{net::UnixDatagram, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rmm_tests::{TempDir, Value, nonce, run_bounded};

use crate::{
    path_str, poll, root_lock, root_or_skip, run_ok, unit_service_settings, unit_setting, workspace,
};

const PACKAGE: &str = "rmm-monitor";
const UNIT: &str = "/lib/systemd/system/rmm-monitor.service";
/// What the package installs and the purge must remove.
const INSTALLED: &[&str] = &[
    "/usr/bin/rmm-monitor",
    "/etc/rmm-monitor",
    "/etc/rmm-monitor/config.toml",
    "/etc/rmm-monitor/rules.d",
    UNIT,
];
const TIMEOUT: Duration = Duration::from_secs(30);
/// The watchdog interval given to the daemon: the unit's 30 s would take 15 s to show a kick.
const WATCHDOG_USEC: &str = "2000000";

/// `$RMM_DEB`, else the newest `target/debian/rmm-monitor_*_amd64.deb`.
fn find_deb() -> PathBuf {
    if let Some(p) = std::env::var_os("RMM_DEB") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "RMM_DEB={} is not a file", p.display());
        return p;
    }
    let dir = workspace().join("target/debian");
    let newest = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("rmm-monitor_") && n.ends_with("_amd64.deb")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    newest
        .unwrap_or_else(|| {
            panic!(
                "no rmm-monitor_*_amd64.deb in {}: build it with `cargo xtask package` (or set \
                 RMM_DEB to a package)",
                dir.display()
            )
        })
        .1
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"))
}

/// The installed package; purged on drop (also when the test fails).
struct Package {
    purged: bool,
}

impl Package {
    fn install(deb: &Path) -> Package {
        if installed() {
            eprintln!("note: {PACKAGE} was installed before this test; it is purged at the end");
        }
        // From here on, whatever happens, the guard purges.
        let p = Package { purged: false };
        let run = run_ok(Path::new("dpkg"), &["-i", path_str(deb)]);
        println!("dpkg -i {}:\n{}{}", deb.display(), run.stdout, run.stderr);
        p
    }

    fn purge(&mut self) -> rmm_tests::HelperRun {
        self.purged = true;
        run_bounded(Path::new("dpkg"), &["-P", PACKAGE])
    }
}

impl Drop for Package {
    fn drop(&mut self) {
        if !self.purged {
            let run = self.purge();
            eprintln!(
                "purged {PACKAGE} after a failure ({}): {}",
                run.status, run.stderr
            );
        }
    }
}

use rmm_tests::journald::Journald;

/// Signals a child and waits (bounded) for it; SIGKILL when it does not exit.
fn stop(child: &mut Child, signal: libc::c_int) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The sd_notify socket, as systemd provides it to a Type=notify service.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every `KEY=VALUE` line received, in order.
    got: Vec<String>,
    /// Where the next wait starts looking.
    next: usize,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        NotifySocket {
            sock,
            path,
            got: Vec::new(),
            next: 0,
        }
    }

    /// Waits for the next received line (after the one the previous wait returned) that
    /// satisfies `pred`, and returns it.
    fn wait(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            if let Some(i) = (self.next..self.got.len()).find(|&i| pred(&self.got[i])) {
                self.next = i + 1;
                return self.got[i].clone();
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "no {what} on the notify socket within {TIMEOUT:?}; received: {:?}",
                self.got
            );
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.got.extend(text.lines().map(str::to_owned));
            }
        }
    }
}

/// Capability names (setpriv's spelling) and their bits, for the unit's capabilities.
const CAP_BITS: &[(&str, u32)] = &[
    ("chown", 0),
    ("dac_override", 1),
    ("dac_read_search", 2),
    ("fowner", 3),
    ("kill", 5),
    ("setgid", 6),
    ("setuid", 7),
    ("setpcap", 8),
    ("net_bind_service", 10),
    ("net_admin", 12),
    ("net_raw", 13),
    ("ipc_lock", 14),
    ("sys_chroot", 18),
    ("sys_ptrace", 19),
    ("sys_admin", 21),
    ("sys_nice", 23),
    ("sys_resource", 24),
    ("audit_write", 29),
    ("syslog", 34),
    ("perfmon", 38),
    ("bpf", 39),
];

/// This process's capability bounding set.
fn own_bounding_set() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd in /proc/self/status")
        .trim();
    u64::from_str_radix(hex, 16).expect("CapBnd is hex")
}

/// `CAP_X CAP_Y` of the unit as setpriv names, keeping those this process has (a sandbox may
/// lack some; they are reported), and their mask.
fn setpriv_caps(list: &str, own: u64) -> (Vec<String>, u64) {
    let mut out = Vec::new();
    let mut mask = 0;
    for c in list.split_whitespace() {
        let name = c
            .strip_prefix("CAP_")
            .unwrap_or_else(|| panic!("capability {c:?} lacks CAP_"))
            .to_ascii_lowercase();
        let bit = CAP_BITS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("the test does not know capability {c}"))
            .1;
        if own & (1 << bit) == 0 {
            println!("note: this machine withholds {c}: the daemon runs without it");
            continue;
        }
        out.push(format!("+{name}"));
        mask |= 1 << bit;
    }
    (out, mask)
}

/// The parts of the unit's file-system sandbox that decide what the daemon can see, applied
/// the way systemd applies them (a mount namespace of the daemon's own, before exec):
/// ProtectProc=invisible (a procfs with hidepid=invisible), ProtectHome=yes (empty, mode 000
/// directories over /home, /root and /run/user), PrivateDevices=yes (a /dev with only the
/// pseudo devices and the /dev/log symlink to journald), LimitMEMLOCK=infinity.
#[derive(Clone, Copy, Default)]
struct Sandbox {
    protect_proc_invisible: bool,
    protect_home: bool,
    private_devices: bool,
    memlock_infinity: bool,
}

impl Sandbox {
    fn of(s: &[(String, String)]) -> Sandbox {
        let opt = |key: &str| {
            s.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let sandbox = Sandbox {
            protect_proc_invisible: opt("ProtectProc") == Some("invisible"),
            protect_home: opt("ProtectHome") == Some("yes"),
            private_devices: opt("PrivateDevices") == Some("yes"),
            memlock_infinity: opt("LimitMEMLOCK") == Some("infinity"),
        };
        println!(
            "sandbox as the unit asks: ProtectProc=invisible {}, ProtectHome=yes {}, PrivateDevices=yes {}, LimitMEMLOCK=infinity {}",
            sandbox.protect_proc_invisible,
            sandbox.protect_home,
            sandbox.private_devices,
            sandbox.memlock_infinity
        );
        sandbox
    }

    /// In the child, before exec: only system calls, on static strings.
    fn apply(self) -> std::io::Result<()> {
        use std::ffi::CStr;
        let fail = |what: &str| {
            let e = std::io::Error::last_os_error();
            std::io::Error::new(e.kind(), format!("{what}: {e}"))
        };
        let mount = |src: &CStr, dst: &CStr, ty: &CStr, flags: libc::c_ulong, data: &CStr| {
            // SAFETY: NUL-terminated strings that outlive the call.
            let rc = unsafe {
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    ty.as_ptr(),
                    flags,
                    data.as_ptr().cast(),
                )
            };
            if rc == 0 { Ok(()) } else { Err(fail("mount")) }
        };
        if self.memlock_infinity {
            let lim = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: a valid struct. Where this machine withholds CAP_SYS_RESOURCE from the
            // test, the limit stays as it is (kernels since 5.11 do not charge BPF maps to it).
            let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
        }
        if !(self.protect_proc_invisible || self.protect_home || self.private_devices) {
            return Ok(());
        }
        // SAFETY: plain system calls.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(fail("unshare"));
        }
        // SAFETY: a null source and type are allowed for a propagation change.
        if unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            )
        } != 0
        {
            return Err(fail("making / a slave mount"));
        }
        let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if self.protect_proc_invisible {
            mount(c"proc", c"/proc", c"proc", hardened, c"hidepid=invisible")?;
        }
        if self.protect_home {
            for d in [c"/home", c"/root", c"/run/user"] {
                // SAFETY: a NUL-terminated path.
                if unsafe { libc::access(d.as_ptr(), libc::F_OK) } == 0 {
                    mount(
                        c"tmpfs",
                        d,
                        c"tmpfs",
                        hardened | libc::MS_RDONLY,
                        c"mode=000",
                    )?;
                }
            }
        }
        if self.private_devices {
            mount(
                c"tmpfs",
                c"/dev",
                c"tmpfs",
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"mode=755",
            )?;
            for (path, major, minor) in [
                (c"/dev/null", 1, 3),
                (c"/dev/zero", 1, 5),
                (c"/dev/full", 1, 7),
                (c"/dev/random", 1, 8),
                (c"/dev/urandom", 1, 9),
                (c"/dev/tty", 5, 0),
            ] {
                // SAFETY: a NUL-terminated path.
                if unsafe {
                    libc::mknod(
                        path.as_ptr(),
                        libc::S_IFCHR | 0o666,
                        libc::makedev(major, minor),
                    )
                } != 0
                {
                    return Err(fail("mknod"));
                }
            }
            // SAFETY: NUL-terminated paths.
            if unsafe {
                libc::symlink(
                    c"/run/systemd/journal/dev-log".as_ptr(),
                    c"/dev/log".as_ptr(),
                )
            } != 0
            {
                return Err(fail("symlink /dev/log"));
            }
        }
        Ok(())
    }
}

/// The installed daemon, started as the unit starts it: ExecStart under setpriv with the
/// unit's capability bounding set (and ambient set and SecureBits when it has them),
/// NoNewPrivileges and UMask, as root, in /, with NOTIFY_SOCKET and WATCHDOG_USEC, in the
/// [`Sandbox`] parts of its file-system sandboxing (the rest is judged by `systemd-analyze
/// security`; it needs systemd to apply).
struct UnitDaemon {
    child: Child,
    /// The capabilities the daemon must hold: the unit's ambient set (less what this machine
    /// withholds).
    caps: u64,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl UnitDaemon {
    fn start(unit_text: &str, notify: &Path) -> UnitDaemon {
        let s = unit_service_settings(unit_text);
        assert_eq!(unit_setting(&s, "Type"), "notify");
        assert_eq!(unit_setting(&s, "User"), "root");
        let exec = unit_setting(&s, "ExecStart");
        assert!(
            !exec.contains(['"', '\'', '$', '%', '\\']) && exec.starts_with('/'),
            "ExecStart needs a richer parser than this test has: {exec}"
        );
        let argv: Vec<&str> = exec.split_whitespace().collect();
        let own = own_bounding_set();
        let opt = |key: &str| {
            s.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let (bounding, bounding_mask) =
            setpriv_caps(unit_setting(&s, "CapabilityBoundingSet"), own);
        let mut args = vec![format!("--bounding-set=-all,{}", bounding.join(","))];
        // Root without an ambient set holds its bounding set after exec; with one (and
        // SecureBits=noroot), what the ambient set names.
        let caps = match opt("AmbientCapabilities") {
            Some(list) => {
                let (ambient, mask) = setpriv_caps(list, own);
                args.push(format!("--inh-caps=-all,{}", ambient.join(",")));
                args.push(format!("--ambient-caps=-all,{}", ambient.join(",")));
                mask
            }
            None => bounding_mask,
        };
        if let Some(bits) = opt("SecureBits") {
            let bits: Vec<String> = bits
                .split_whitespace()
                .map(|b| format!("+{}", b.replace('-', "_")))
                .collect();
            args.push(format!("--securebits={}", bits.join(",")));
        }
        if unit_setting(&s, "NoNewPrivileges") == "yes" {
            args.push("--no-new-privs".into());
        }
        let sandbox = Sandbox::of(&s);
        let umask = u32::from_str_radix(unit_setting(&s, "UMask"), 8).expect("UMask is octal");
        println!(
            "starting as the unit does: setpriv {} {exec}",
            args.join(" ")
        );
        let mut cmd = Command::new("setpriv");
        cmd.args(&args)
            .args(&argv)
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin")
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", WATCHDOG_USEC)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: umask(2), setrlimit(2) and the sandbox's mounts are async-signal-safe system
        // calls on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(umask as libc::mode_t);
                sandbox.apply()
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting setpriv {exec}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let pipe = child.stderr.take().expect("stderr is piped");
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
        UnitDaemon {
            child,
            caps,
            stderr,
            reader: Some(reader),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, not reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Every thread holds nothing beyond the unit's capabilities and cannot gain more; once
    /// attached, the main thread and the processor keep CAP_BPF and CAP_SYS_PTRACE, the sink
    /// workers none (privs.rs).
    fn assert_confined(&self) {
        const KEPT: u64 = (1 << 39) | (1 << 19);
        let threads = rmm_tests::thread_caps(self.pid());
        let seen = threads.len();
        for t in &threads {
            let name = &t.name;
            let want = if name.starts_with("rmm-sink") {
                0
            } else if t.tid == self.pid() || name == "rmm-processor" {
                KEPT & self.caps
            } else {
                panic!("a thread the test does not know: {name}")
            };
            for (k, v) in [("CapEff", t.eff), ("CapPrm", t.prm)] {
                assert_eq!(v, want, "{k} of {name}, the unit's {:#x}", self.caps);
            }
            for (k, v) in [("CapInh", t.inh), ("CapAmb", t.amb)] {
                assert_eq!(v, 0, "{k} of {name}");
            }
            assert_eq!(t.bnd & !self.caps, 0, "CapBnd of {name}");
            assert!(t.no_new_privs, "NoNewPrivileges of {name}");
        }
        assert!(seen >= 3, "main, processor and a sink: {seen} threads");
    }

    /// The journal entries matching `matches`, once there is one (within TIMEOUT).
    fn journal_wait(&self, what: &str, matches: &[String]) -> Vec<Value> {
        poll(
            &format!("{what} in the journal"),
            TIMEOUT,
            || {
                let e = journal(matches);
                (!e.is_empty()).then_some(e)
            },
            || format!("daemon stderr:\n{}", self.stderr()),
        )
    }

    fn assert_running(&mut self) {
        if let Ok(Some(s)) = self.child.try_wait() {
            panic!("the daemon exited ({s}); stderr:\n{}", self.stderr());
        }
    }

    /// SIGTERM (the unit's stop), bounded; the exit status and the whole stderr.
    fn stop(mut self) -> (Option<ExitStatus>, String) {
        let status = stop(&mut self.child, libc::SIGTERM);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.stderr())
    }
}

impl Drop for UnitDaemon {
    fn drop(&mut self) {
        let _ = stop(&mut self.child, libc::SIGKILL);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The journal entries matching every `FIELD=VALUE` of `matches`.
fn journal(matches: &[String]) -> Vec<Value> {
    let mut args = vec!["-o", "json", "--all", "--no-pager", "-q"];
    args.extend(matches.iter().map(String::as_str));
    let run = run_ok(Path::new("journalctl"), &args);
    run.stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journalctl JSON ({e}): {l}")))
        .collect()
}

#[test]
fn debian_package_installs_runs_and_purges() {
    root_or_skip!("debian_package_installs_runs_and_purges");
    let _root = root_lock();
    let started = Instant::now();
    let deb = find_deb();
    let mut package = Package::install(&deb);
    for p in INSTALLED {
        assert!(Path::new(p).exists(), "{p} is missing after dpkg -i");
    }

    let verify = run_ok(Path::new("systemd-analyze"), &["verify", UNIT]);
    println!(
        "systemd-analyze verify: ok{}{}",
        verify.stdout, verify.stderr
    );
    let security = run_ok(
        Path::new("systemd-analyze"),
        &["security", "--offline=true", "--no-pager", UNIT],
    );
    println!(
        "systemd-analyze security --offline=true:\n{}",
        security.stdout
    );
    let overall = security
        .stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for rmm-monitor.service:"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no overall exposure level:\n{}", security.stdout));
    let mut words = overall.split_whitespace();
    let score: f64 = words
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {overall:?}"));
    let level = words.next().unwrap_or_default();
    assert!(
        !["UNSAFE", "EXPOSED"].contains(&level),
        "the unit's exposure is {overall}"
    );
    println!("exposure: {score} {level}");
    assert!(score <= 2.5, "the unit's exposure is {overall}, above 2.5");

    let _journald = Journald::ensure();
    let tmp = TempDir::new("deploy-deb");
    let mut notify = NotifySocket::bind(tmp.path());
    // A tool of another user, running before the start: the inventory must read its
    // /proc/PID/exe through the unit's ProtectProc=invisible without CAP_DAC_READ_SEARCH.
    let sleeper_dir = TempDir::new(&format!("deploy-deb-nobody-{}", nonce()));
    let sleeper_exe = sleeper_dir.copy_executable("/bin/sleep", "anydesk");
    let mut sleeper = rmm_tests::spawn_as_nobody(&sleeper_exe, &["120"]);
    let sleeper_pid = sleeper.id();
    let unit_text = std::fs::read_to_string(UNIT).expect("reading the installed unit");
    let mut daemon = UnitDaemon::start(&unit_text, &notify.path);
    let ready = Instant::now();
    notify.wait("READY=1", |l| l == "READY=1");
    let status = notify.wait("STATUS=", |l| l.starts_with("STATUS="));
    println!("notify after {:?}: READY=1, {status}", ready.elapsed());
    notify.wait("WATCHDOG=1", |l| l == "WATCHDOG=1");
    daemon.assert_running();
    daemon.assert_confined();

    let matches = [
        "RMM_TOOL=anydesk".to_owned(),
        "EVENT_ACTION=inventory".to_owned(),
        format!("PROCESS_EXECUTABLE={}", sleeper_exe.display()),
    ];
    let entries = daemon.journal_wait("the inventory alert of nobody's anydesk", &matches);
    assert_eq!(
        entries[0]["PROCESS_PID"],
        sleeper_pid.to_string(),
        "{}",
        entries[0]
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    // An alert, read back from journald by the unique path of the process.
    let bin = TempDir::new(&format!("deploy-deb-{}", nonce()));
    let exe = bin.copy_executable("/bin/true", "anydesk");
    let st = Command::new(&exe).status().expect("running anydesk");
    assert!(st.success());
    let matches = [
        "RMM_TOOL=anydesk".to_owned(),
        format!("PROCESS_EXECUTABLE={}", exe.display()),
    ];
    let entries = daemon.journal_wait("the anydesk alert", &matches);
    let e = &entries[0];
    assert_eq!(
        e["_PID"],
        daemon.pid().to_string(),
        "sent by the daemon: {e}"
    );
    assert_eq!(e["SYSLOG_IDENTIFIER"], "rmm-monitor", "{e}");
    assert_eq!(e["RMM_INDICATOR"], "binary", "{e}");
    println!("journal: {}", e["MESSAGE"]);

    // ExecReload (kill -HUP $MAINPID): RELOADING=1, then READY=1 again.
    daemon.signal(libc::SIGHUP);
    notify.wait("RELOADING=1", |l| l == "RELOADING=1");
    notify.wait("READY=1 after the reload", |l| l == "READY=1");
    daemon.assert_running();

    let (status, stderr) = daemon.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "the daemon's exit after SIGTERM: {status:?}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("final stats: ") && stderr.contains("SIGHUP: rules reloaded"),
        "stderr:\n{stderr}"
    );
    notify.wait("STOPPING=1", |l| l == "STOPPING=1");
    drop(notify);

    let purge = package.purge();
    assert!(purge.status.success(), "dpkg -P failed: {}", purge.stderr);
    for p in INSTALLED
        .iter()
        .chain(&["/etc/systemd/system/multi-user.target.wants/rmm-monitor.service"])
    {
        assert!(
            std::fs::symlink_metadata(p).is_err(),
            "{p} is still there after dpkg -P"
        );
    }
    assert!(!installed(), "dpkg still lists {PACKAGE}");
    println!("package test took {:?}", started.elapsed());
}
