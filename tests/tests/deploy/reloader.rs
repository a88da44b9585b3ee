//! The reloader sidecar (deploy/helm/rmm-monitor/files/reloader.sh) against a real daemon, the
//! way the pod lays them out: the daemon and the reloader in two sibling cgroups under a "pod"
//! cgroup, a decoy process also named rmm-monitor in another cgroup (an rmm-monitor of the
//! node or of another pod, all visible with hostPID). With the reloader in a cgroup namespace of
//! its own (containerd on cgroup v2 nodes) and without (cgroup v1 nodes, or runtimes that share
//! the host's); under dash and under busybox's sh (the chart's default reloader image is
//! busybox).

/// busybox (the Debian package busybox-static), whose `sh` stands in for the reloader image's.
const BUSYBOX: &str = "/bin/busybox";

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rmm_tests::{Monitor, TempDir, cgroup2_root, nonce};

use crate::{chart_dir, path_str, poll, root_lock, root_or_skip};

const WAIT: Duration = Duration::from_secs(15);

/// A cgroup directory (under the cgroup v2 root), removed on drop once empty.
struct CgroupDir(PathBuf);

impl CgroupDir {
    fn new(path: PathBuf) -> CgroupDir {
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        CgroupDir(path)
    }

    fn add(&self, pid: u32) {
        let procs = self.0.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} to {}: {e}", self.0.display()));
    }

    /// The path as /proc/PID/cgroup shows it outside any cgroup namespace.
    fn rel(&self) -> String {
        let root = cgroup2_root();
        format!(
            "/{}",
            self.0
                .strip_prefix(&root)
                .expect("under the cgroup v2 root")
                .display()
        )
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        for _ in 0..200 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("could not remove cgroup {}", self.0.display());
    }
}

/// A child killed on drop.
struct Proc(Child);

impl Proc {
    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Replaces `path` the way the kubelet updates a ConfigMap volume: whole, atomically.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `shell` runs the script: "/bin/sh" or "/bin/busybox sh".
fn round(cgroupns: bool, shell: &str) {
    let tag = nonce();
    let root = cgroup2_root();
    let pod = CgroupDir::new(root.join(format!("rmm-deploy-pod-{tag}")));
    let daemon_cg = CgroupDir::new(pod.0.join("daemon"));
    let reloader_cg = CgroupDir::new(pod.0.join("reloader"));
    let other = CgroupDir::new(root.join(format!("rmm-deploy-other-{tag}")));

    // The mounted configuration: /etc/rmm-monitor of the pod.
    let scratch = TempDir::new("deploy-reloader");
    let etc = scratch.path().join("etc");
    std::fs::create_dir_all(etc.join("rules.d")).expect("mkdir rules.d");
    let config = etc.join("config.toml");
    let rules = etc.join("rules.d/10-local.toml");
    std::fs::write(&config, "# config\n").expect("writing config.toml");
    std::fs::write(&rules, "# no rules yet\n").expect("writing the rules file");

    // Decoys: a `sleep` named rmm-monitor (SIGHUP or SIGTERM would end it) in another pod's
    // cgroup, in the pod's own cgroup (not a container) and in the reloader's cgroup.
    let decoy_bin = scratch.path().join("decoy");
    std::fs::create_dir(&decoy_bin).expect("mkdir");
    let decoy_exe = decoy_bin.join("rmm-monitor");
    std::fs::copy("/bin/sleep", &decoy_exe).expect("copying sleep");
    let mut decoys: Vec<Proc> = [&other, &pod, &reloader_cg]
        .into_iter()
        .map(|cg| {
            let p = Proc(
                Command::new(&decoy_exe)
                    .arg("120")
                    .spawn()
                    .expect("starting a decoy"),
            );
            cg.add(p.0.id());
            p
        })
        .collect();
    let decoy_pids: Vec<u32> = decoys.iter().map(|d| d.0.id()).collect();

    // Started after the decoys: /proc lists the decoys' (smaller) pids first.
    let daemon = Monitor::start(&[
        "--config",
        path_str(&config),
        "--rules-dir",
        path_str(&etc.join("rules.d")),
    ]);
    daemon_cg.add(daemon.pid());

    // The reloader: it moves itself into its cgroup before anything reads /proc/self/cgroup.
    let script = chart_dir().join("files/reloader.sh");
    let log = scratch.path().join("reloader.log");
    let run = if cgroupns {
        format!("exec /usr/bin/unshare --cgroup {shell} \"$1\"")
    } else {
        format!("exec {shell} \"$1\"")
    };
    let wrapper = format!(
        "echo $$ > '{}/cgroup.procs' && {run}",
        reloader_cg.0.display()
    );
    let log_file = std::fs::File::create(&log).expect("creating the reloader log");
    // Under busybox, its own cat and sleep too, as in the busybox image.
    let mut path = std::env::var("PATH").unwrap_or_default();
    if shell.starts_with(BUSYBOX) {
        let applets = scratch.path().join("busybox-bin");
        std::fs::create_dir(&applets).expect("mkdir");
        for a in ["cat", "sleep"] {
            std::os::unix::fs::symlink(BUSYBOX, applets.join(a)).expect("symlinking an applet");
        }
        path = path_str(&applets).to_owned();
    }
    let mut reloader = Proc(
        Command::new("/bin/sh")
            .args(["-c", &wrapper, "reloader", path_str(&script)])
            .env("RMM_RELOAD_DIR", &etc)
            .env("RMM_RELOAD_INTERVAL", "1")
            .env("RMM_RELOAD_COMM", "rmm-monitor")
            .env("PATH", &path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting the reloader"),
    );
    let watching = poll(
        "the reloader to start",
        WAIT,
        || {
            read(&log)
                .lines()
                .find(|l| l.contains("watching"))
                .map(str::to_owned)
        },
        || format!("reloader log:\n{}", read(&log)),
    );
    let (own, parent) = if cgroupns {
        ("/".to_owned(), "/..".to_owned())
    } else {
        (reloader_cg.rel(), pod.rel())
    };
    assert!(
        watching.contains(&format!("(cgroup {own}, pod {parent})")),
        "cgroupns={cgroupns} {shell}: {watching}"
    );

    // A rules change: SIGHUP, and the daemon reloads.
    replace(
        &rules,
        "[[allow]]\ntool = \"anydesk\"\nexecutable = \"/opt/helpdesk/**\"\nreason = \"test\"\n",
    );
    let line = poll(
        "the reloader's SIGHUP",
        WAIT,
        || {
            read(&log)
                .lines()
                .find(|l| l.contains("SIGHUP"))
                .map(str::to_owned)
        },
        || format!("reloader log:\n{}", read(&log)),
    );
    assert!(
        line.contains(&format!("(pid {})", daemon.pid())),
        "cgroupns={cgroupns} {shell}: signalled another process: {line} (daemon {}, decoys {decoy_pids:?})",
        daemon.pid(),
    );
    daemon.wait_for_log("the rules reload", |m| {
        m.starts_with("SIGHUP: rules reloaded")
    });
    assert!(decoys.iter_mut().all(Proc::alive), "a decoy was signalled");

    // A config.toml change: SIGTERM; the daemon drains and exits 0 (the kubelet would restart
    // its container).
    replace(&config, "# config, changed\n");
    daemon.wait_for_log("the daemon's exit", |m| m.starts_with("final stats: "));
    let stopped = daemon.stop_with(0);
    assert!(
        stopped.status.success(),
        "cgroupns={cgroupns} {shell}: exit after the reloader's SIGTERM: {}",
        stopped.status
    );
    assert!(
        read(&log).contains("config.toml changed: SIGTERM"),
        "reloader log:\n{}",
        read(&log)
    );
    assert!(decoys.iter_mut().all(Proc::alive), "a decoy was signalled");

    // The reloader itself stops at once on SIGTERM, with status 0.
    let pid = libc::pid_t::try_from(reloader.0.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let started = Instant::now();
    let status = poll(
        "the reloader's exit",
        Duration::from_secs(5),
        || reloader.0.try_wait().ok().flatten(),
        || format!("reloader log:\n{}", read(&log)),
    );
    assert!(status.success(), "reloader exit: {status}");
    println!(
        "cgroupns={cgroupns} {shell}: reloader stopped in {:?}; log:\n{}",
        started.elapsed(),
        read(&log)
    );
    drop(decoys);
    drop(reloader);
}

#[test]
fn reloader_signals_only_the_daemon_of_its_pod() {
    root_or_skip!("reloader_signals_only_the_daemon_of_its_pod");
    let _root = root_lock();
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: install the Debian package busybox-static"
    );
    round(true, "/bin/sh");
    round(false, "/bin/sh");
    round(true, &format!("{BUSYBOX} sh"));
}

#[test]
fn reloader_script_passes_shellcheck() {
    let shellcheck = Path::new("/usr/bin/shellcheck");
    assert!(
        shellcheck.is_file(),
        "{} is missing: install the Debian package shellcheck",
        shellcheck.display()
    );
    let script = chart_dir().join("files/reloader.sh");
    crate::run_ok(
        shellcheck,
        &["--shell=sh", "--severity=style", path_str(&script)],
    );
}
