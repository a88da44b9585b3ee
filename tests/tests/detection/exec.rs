//! Process detection: vendor paths and names on exec (including a name only `comm` carries),
//! a real Debian VNC server, the start-up inventory and `rmm-monitor scan`, and the parent
//! chain of a tool started under a web server.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rmm_tests::{comm_of, monitor_bin, nonce, run_bounded};

use crate::{
    Daemon, Running, assert_context, assert_context_within, assert_event_process, assert_identity,
    assert_match, assert_process, helper, helper_comm, helper_flags, own_exe, path_str,
    read_alerts, root_or_skip, run_ok, strs,
};

/// A directory tree this test created under /opt, removed on drop.
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies `src` to `dir/name` (mode 0755), creating `dir`; returns the new file.
fn plant(src: &str, dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", dir.display()));
    let dst = dir.join(name);
    std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {src} to {}: {e}", dst.display()));
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dst.display()));
    dst
}

/// /opt/teamviewer/tv_bin/teamviewerd, or a unique directory inside an existing
/// /opt/teamviewer (never touching what was there).
fn plant_teamviewerd() -> (Planted, PathBuf) {
    let top = Path::new("/opt/teamviewer");
    if top.exists() {
        let dir = top.join(format!("rmm-e2e-{}", nonce()));
        let exe = plant("/bin/true", &dir.join("tv_bin"), "teamviewerd");
        (Planted(dir), exe)
    } else {
        let exe = plant("/bin/true", &top.join("tv_bin"), "teamviewerd");
        (Planted(top.to_path_buf()), exe)
    }
}

#[test]
fn vendor_paths_and_names_alert_on_exec() {
    root_or_skip!("vendor_paths_and_names_alert_on_exec");
    let dir = Daemon::dir("exec");
    let tmp = dir.path().to_path_buf();
    let (_tv_dir, teamviewerd) = plant_teamviewerd();
    let hex16 = format!("{}{}", nonce(), &nonce()[..4]);
    let sc_dir = PathBuf::from(format!("/opt/screenconnect-{hex16}"));
    let _sc = Planted(sc_dir.clone());
    let sc_name = format!("svc-{}", nonce());
    let screenconnect = plant("/bin/true", &sc_dir.join("bin"), &sc_name);
    let anydesk = plant("/bin/true", &tmp, "anydesk");
    let tv_desktop = plant("/bin/true", &tmp.join("tv"), "TeamViewer_Desktop");
    // Not a catalog name, but the kernel cuts it to `TeamViewer_Desk`, the 15-byte comm of
    // TeamViewer_Desktop: only comm carries the match.
    let comm_only_name = format!("TeamViewer_Desktop.{}", nonce());
    let comm_only = plant("/bin/true", &tmp, &comm_only_name);
    // Look-alikes that must stay silent.
    let lookalikes: Vec<PathBuf> = ["anydesk-notes", "vncviewer", "teamviewer.txt.sh", "rust"]
        .iter()
        .map(|n| plant("/bin/true", &tmp.join("look"), n))
        .collect();

    let d = Daemon::start_in(dir, &[]);
    let me = std::process::id();
    let me_exe = own_exe();
    let silent: Vec<u32> = lookalikes
        .iter()
        .map(|p| run_ok(&mut Command::new(p)))
        .collect();
    let mut vendor = Vec::new();
    for &pid in &silent {
        d.seen("exec", pid);
    }

    // A vendor path: the path glob wins, whatever the name.
    let tv = path_str(&teamviewerd);
    let pid = run_ok(Command::new(tv).args(["--daemon", "start"]));
    let a = d.alert_of("exec", pid);
    vendor.push(pid);
    assert_match(&a, "teamviewer", "path", tv, "exec");
    assert_context(&a, "high", &["not_packaged"], "T1219.002");
    assert_process(&a, pid, "teamviewerd", tv, Some((me, &me_exe)));
    assert_eq!(strs(&a["process"]["args"]), vec![tv, "--daemon", "start"]);
    assert_eq!(a["rmm"]["ancestors"][0]["pid"], me, "{a}");
    assert_eq!(a["rmm"]["count"], 1, "{a}");

    // A vendor name in /tmp: binary, raised twice (temp_dir, not_packaged).
    let ad = path_str(&anydesk);
    let pid = run_ok(Command::new(ad).arg("--tray"));
    let a = d.alert_of("exec", pid);
    vendor.push(pid);
    assert_match(&a, "anydesk", "binary", "anydesk", "exec");
    assert_context(&a, "high", &["temp_dir", "not_packaged"], "T1219.002");
    assert_eq!(a["rmm"]["severity"], "critical", "{a}");
    assert_eq!(a["event"]["severity"], 99, "{a}");
    assert_process(&a, pid, "anydesk", ad, Some((me, &me_exe)));
    assert_eq!(strs(&a["process"]["args"]), vec![ad, "--tray"]);
    assert_eq!(a["rule"]["id"], "rmm.anydesk.binary", "{a}");

    // An 18-byte vendor name: the executable's name matches; comm is cut to 15 bytes.
    let tvd = path_str(&tv_desktop);
    let pid = run_ok(&mut Command::new(tvd));
    let a = d.alert_of("exec", pid);
    vendor.push(pid);
    assert_match(&a, "teamviewer", "binary", "TeamViewer_Desktop", "exec");
    assert_context(&a, "high", &["temp_dir", "not_packaged"], "T1219.002");
    assert_process(&a, pid, "TeamViewer_Desk", tvd, Some((me, &me_exe)));

    // Only comm matches.
    let co = path_str(&comm_only);
    let pid = run_ok(&mut Command::new(co));
    let a = d.alert_of("exec", pid);
    vendor.push(pid);
    assert_match(&a, "teamviewer", "binary", "TeamViewer_Desk", "exec");
    assert_context(&a, "high", &["temp_dir", "not_packaged"], "T1219.002");
    assert_process(&a, pid, &comm_of(&comm_only_name), co, Some((me, &me_exe)));
    assert_eq!(comm_of(&comm_only_name), "TeamViewer_Desk");

    // ScreenConnect's per-instance directory /opt/screenconnect-<16 hex>/.
    let sc = path_str(&screenconnect);
    let pid = run_ok(&mut Command::new(sc));
    let a = d.alert_of("exec", pid);
    vendor.push(pid);
    assert_match(&a, "screenconnect", "path", sc, "exec");
    assert_context(&a, "high", &["not_packaged"], "T1219.002");
    assert_process(&a, pid, &comm_of(&sc_name), sc, Some((me, &me_exe)));

    // The look-alikes ran before all of these.
    let alerts = read_alerts(&d.alerts);
    for &pid in &silent {
        assert!(
            !alerts.iter().any(|a| a["process"]["pid"] == pid),
            "a look-alike (pid {pid}) alerted: {alerts:?}"
        );
    }
    let f = d.stop();
    for &pid in &silent {
        assert!(f.of_pid(pid).is_empty(), "look-alike pid {pid} alerted");
    }
    // Other processes on the machine may alert too: only this test's pids are counted.
    for pid in vendor {
        assert_eq!(
            f.of_pid(pid).len(),
            1,
            "one alert for vendor exec pid {pid}"
        );
    }
    assert!(f.count("alerts", "teamviewer") >= 3, "{}", f.detection);
    assert!(f.count("alerts", "screenconnect") >= 1, "{}", f.detection);
}

/// A display number whose lock file and socket are free.
fn free_display() -> u32 {
    let start = 40 + u32::from(nonce().as_bytes()[0] % 40);
    (start..start + 40)
        .find(|n| {
            !Path::new(&format!("/tmp/.X{n}-lock")).exists()
                && !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
        })
        .expect("a free X display number")
}

/// A VNC port (5900-5910, the catalog's) free on both loopback addresses.
fn free_vnc_port() -> u16 {
    (5900..=5910)
        .find(|p| {
            TcpListener::bind(("127.0.0.1", *p)).is_ok() && TcpListener::bind(("::1", *p)).is_ok()
        })
        .expect("a free port in 5900-5910")
}

/// Xtigervnc, stopped with SIGTERM (so that it removes its lock file and X socket) on drop.
struct VncServer {
    child: std::process::Child,
    display: u32,
}

impl Drop for VncServer {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Both were free before it started (see `free_display`).
        let _ = std::fs::remove_file(format!("/tmp/.X{}-lock", self.display));
        let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{}", self.display));
    }
}

#[test]
fn real_vnc_server_alerts_on_exec_and_connect() {
    root_or_skip!("real_vnc_server_alerts_on_exec_and_connect");
    let xvnc = "/usr/bin/Xtigervnc";
    assert!(
        Path::new(xvnc).is_file(),
        "{xvnc} is missing: the Debian package tigervnc-standalone-server must be installed \
         (xtask setup)"
    );
    let display = free_display();
    let port = free_vnc_port();
    let d = Daemon::start("vnc", &[]);
    let args = [
        format!(":{display}"),
        "-rfbport".into(),
        port.to_string(),
        "-localhost".into(),
        "-SecurityTypes".into(),
        "None".into(),
        "-nolisten".into(),
        "tcp".into(),
    ];
    let server = VncServer {
        child: Command::new(xvnc)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {xvnc}: {e}")),
        display,
    };
    let pid = server.child.id();
    let a = d.alert_of("exec", pid);
    assert_match(&a, "vnc", "binary", "Xtigervnc", "exec");
    // Packaged, in /usr/bin: no context, the tool's own severity.
    assert_context(&a, "medium", &[], "T1219.002");
    assert_eq!(a["event"]["severity"], 47, "{a}");
    assert_process(
        &a,
        pid,
        "Xtigervnc",
        xvnc,
        Some((std::process::id(), &own_exe())),
    );
    let mut want = vec![xvnc.to_owned()];
    want.extend(args.iter().cloned());
    assert_eq!(strs(&a["process"]["args"]), want, "{a}");
    // The process and its parent by identity: the server's start from its exec record, the
    // test process's from /proc or its own records.
    assert_identity(&a["process"], pid);
    assert_identity(&a["process"]["parent"], std::process::id());

    // A viewer connecting to it: the VNC port alerts, and the connect succeeds.
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    while TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_err() {
        assert!(
            started.elapsed() < rmm_tests::monitor::scaled(Duration::from_secs(15)),
            "Xtigervnc never listened on {to}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = helper(&["connect", "127.0.0.1", &port.to_string()]);
    assert_eq!(run.get("ret"), "0", "connected to Xtigervnc");
    let a = d.alert_of("connect", run.pid);
    assert_match(&a, "vnc", "port", &format!("tcp/{port}"), "connect");
    assert_eq!(a["event"]["outcome"], "success", "{a}");
    assert_eq!(a["destination"]["ip"], "127.0.0.1", "{a}");
    assert_eq!(a["destination"]["port"], port, "{a}");
    assert_event_process(&a, run.pid, &helper_comm());
    assert_context_within(&a, "medium", &helper_flags(), "T1219.002");
    drop(server);
    let f = d.stop();
    assert!(
        f.count("alerts", "vnc") >= 2,
        "exec and connect: {}",
        f.detection
    );
}

#[test]
fn running_tools_are_reported_by_inventory_and_scan() {
    root_or_skip!("running_tools_are_reported_by_inventory_and_scan");
    let dir = Daemon::dir("inventory");
    let rustdesk = plant("/bin/sleep", dir.path(), "rustdesk");
    let exe = path_str(&rustdesk).to_owned();
    // Started before the daemon: only the /proc walk at start-up can see it. It sleeps an hour
    // (killed when the test ends): the scan and start-up below take minutes on an emulated
    // kernel of the matrix, and a copy that exited early would be a zombie without exe or args.
    let running = Running(
        Command::new(&rustdesk)
            .arg("3600")
            .spawn()
            .unwrap_or_else(|e| panic!("starting {exe}: {e}")),
    );
    let pid = running.pid();
    // It must have exec'd before the daemon reads /proc: wait until /proc shows the copy.
    let started = Instant::now();
    while std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .as_deref()
        != Some(&rustdesk)
    {
        assert!(
            started.elapsed() < rmm_tests::monitor::scaled(Duration::from_secs(10)),
            "never exec'd"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let rules_dir = dir.path().join("rules.d");

    // `scan` (no eBPF) first.
    let scan_file = dir.path().join("scan.json");
    let scan = run_bounded(
        &monitor_bin(),
        &[
            "scan",
            "--json",
            path_str(&scan_file),
            "--rules-dir",
            path_str(&rules_dir),
        ],
    );
    assert!(scan.status.success(), "scan failed: {scan:?}");
    let found: Vec<_> = read_alerts(&scan_file)
        .into_iter()
        .filter(|a| a["process"]["pid"] == pid)
        .collect();
    assert_eq!(found.len(), 1, "scan reports the copy once: {found:?}");
    let a = &found[0];
    assert_match(a, "rustdesk", "binary", "rustdesk", "inventory");
    assert_context(a, "high", &["temp_dir", "not_packaged"], "T1219.002");
    assert_process(
        a,
        pid,
        "rustdesk",
        &exe,
        Some((std::process::id(), &own_exe())),
    );
    assert_eq!(
        strs(&a["process"]["args"]),
        vec![exe.as_str(), "3600"],
        "{a}"
    );

    // The daemon's start-up inventory.
    let d = Daemon::start_in(dir, &[]);
    let a = d.alert_of("inventory", pid);
    assert_match(&a, "rustdesk", "binary", "rustdesk", "inventory");
    assert_context(&a, "high", &["temp_dir", "not_packaged"], "T1219.002");
    assert_process(
        &a,
        pid,
        "rustdesk",
        &exe,
        Some((std::process::id(), &own_exe())),
    );
    assert_eq!(
        strs(&a["process"]["args"]),
        vec![exe.as_str(), "3600"],
        "{a}"
    );
    assert_eq!(
        a["rmm"]["ancestors"][0]["pid"],
        std::process::id(),
        "the parent chain comes from /proc: {a}"
    );
    assert_identity(&a["process"], pid);
    assert_identity(&a["rmm"]["ancestors"][0], std::process::id());
    drop(running);
    let f = d.stop();
    assert_eq!(f.of_pid(pid).len(), 1, "one inventory alert, no exec alert");
}

#[test]
fn tool_under_a_web_server_has_a_suspicious_parent_chain() {
    root_or_skip!("tool_under_a_web_server_has_a_suspicious_parent_chain");
    let dir = Daemon::dir("parent");
    let nginx = plant("/bin/bash", dir.path(), "nginx");
    let anydesk = plant("/bin/true", dir.path(), "anydesk");
    let ad = path_str(&anydesk).to_owned();
    let d = Daemon::start_in(dir, &[]);
    // `; true` after each command keeps both shells from exec'ing their last command in place.
    let script = format!("sh -c '{ad}; true'; true");
    let nginx_pid = run_ok(Command::new(&nginx).args(["-c", &script]));
    let a = d.wait_alert("the exec of anydesk under nginx", |a| {
        a["event"]["action"] == "exec" && a["process"]["executable"] == ad.as_str()
    });
    assert_match(&a, "anydesk", "binary", "anydesk", "exec");
    assert_context(
        &a,
        "high",
        &["suspicious_parent", "temp_dir", "not_packaged"],
        "T1219.002",
    );
    assert_eq!(a["rmm"]["severity"], "critical", "{a}");
    let chain = a["rmm"]["ancestors"]
        .as_array()
        .unwrap_or_else(|| panic!("no ancestors: {a}"));
    assert!(chain.len() >= 3, "sh, nginx and the test process: {a}");
    assert_eq!(chain[0]["name"], "sh", "{a}");
    assert_eq!(chain[0]["executable"], "/usr/bin/dash", "{a}");
    assert_eq!(chain[1]["pid"], nginx_pid, "{a}");
    assert_eq!(chain[1]["name"], "nginx", "{a}");
    assert_eq!(chain[1]["executable"], path_str(&nginx), "{a}");
    assert_eq!(chain[2]["pid"], std::process::id(), "{a}");
    assert_eq!(chain[2]["executable"], own_exe().as_str(), "{a}");
    assert_eq!(a["process"]["parent"]["pid"], chain[0]["pid"], "{a}");
    assert_eq!(a["process"]["parent"]["executable"], "/usr/bin/dash", "{a}");
    assert_eq!(a["process"]["executable"], ad.as_str(), "{a}");
    let f = d.stop();
    let mine: Vec<_> = f
        .alerts
        .iter()
        .filter(|a| a["process"]["executable"] == ad.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "one alert for the one exec: {mine:?}");
}

/// `(sleep 3; exec anydesk) &` under nginx: nginx's shell exits at once, the background
/// subshell is reparented to init (the kernel names init as its parent at the exec, three
/// seconds later, past the table's grace period for exited processes), and the alert still
/// goes up through nginx: lineage follows the process that created each one, and an exited
/// ancestor stays while its descendants live.
#[test]
fn a_daemonised_tool_keeps_its_suspicious_ancestor() {
    root_or_skip!("a_daemonised_tool_keeps_its_suspicious_ancestor");
    let dir = Daemon::dir("daemonise");
    let nginx = plant("/bin/bash", dir.path(), "nginx");
    let anydesk = plant("/bin/true", dir.path(), "anydesk");
    let ad = path_str(&anydesk).to_owned();
    let d = Daemon::start_in(dir, &[]);
    let marker = nonce();
    let out = Command::new(&nginx)
        .args(["-c", &format!("( sleep 3; exec {ad} {marker} ) & echo $!")])
        .stdout(Stdio::piped())
        .output()
        .expect("running nginx");
    assert!(out.status.success(), "{out:?}");
    let subshell: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the background pid");
    let a = d.alert_of("exec", subshell);
    assert_eq!(a["process"]["executable"], ad.as_str(), "{a}");
    assert!(
        strs(&a["rmm"]["context"])
            .iter()
            .any(|f| f == "suspicious_parent"),
        "the exited nginx still counts: {a}"
    );
    let chain = a["rmm"]["ancestors"]
        .as_array()
        .unwrap_or_else(|| panic!("no ancestors: {a}"));
    assert_eq!(chain[0]["executable"], path_str(&nginx), "{a}");
    assert_eq!(chain[1]["pid"], std::process::id(), "{a}");
    d.stop();
}

/// Rules reloads (SIGHUP, also logrotate's reopen of the alert file) every few milliseconds
/// through an exec storm of a catalog binary lose no alert and repeat none: each of the N
/// processes is alerted exactly once (de-duplication is per process).
#[test]
fn reloads_during_an_exec_storm_lose_no_alert() {
    root_or_skip!("reloads_during_an_exec_storm_lose_no_alert");
    let dir = Daemon::dir("reload-storm");
    let target = dir.copy_executable("/usr/bin/true", "anydesk");
    let target = path_str(&target).to_owned();
    let d = Daemon::start_in(dir, &[]);
    let daemon = d.m.pid() as libc::pid_t;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hups = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: kill(2) on the daemon, our own child, which has not been reaped.
                assert_eq!(unsafe { libc::kill(daemon, libc::SIGHUP) }, 0);
                sent += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        })
    };
    const N: usize = 300;
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let run = helper(&["burst", &(N / 3).to_string(), &target]);
        assert_eq!(run.get("failed"), "0", "every exec ran");
    }
    let alerts = crate::wait_alerts_in(&d.alerts, "for every exec of the storm", N, |a| {
        a["event"]["action"] == "exec" && a["process"]["executable"] == target.as_str()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = hups.join().expect("the SIGHUP thread");
    for a in &alerts {
        assert_match(a, "anydesk", "binary", "anydesk", "exec");
        pids.insert(a["process"]["pid"].as_u64().expect("a pid"));
    }
    assert_eq!(pids.len(), N, "one alert per process");
    let f = d.stop();
    let all: Vec<&rmm_tests::Value> = f
        .alerts
        .iter()
        .filter(|a| a["process"]["executable"] == target.as_str())
        .collect();
    assert_eq!(
        all.len(),
        N,
        "no alert lost or repeated through {sent} reloads"
    );
    let reloads = f.detection["reloads"].as_u64().unwrap_or(0);
    assert!(
        reloads >= 10,
        "the rules were reloaded during the storm: {reloads} of {sent} SIGHUPs"
    );
}
