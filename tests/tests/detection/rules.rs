//! Rules files: the allowlist, the de-duplication window, `rules check` / `rules list`, and
//! SIGHUP reloads (a broken file keeps the old rules live).

use std::{
    io::ErrorKind,
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
};

use rmm_tests::{TempDir, monitor_bin, nonce, run_bounded};

use crate::{
    Daemon, assert_context, assert_event_process, assert_match, assert_process, helper, helper_bin,
    helper_comm, own_exe, path_str, read_alerts, root_or_skip, run_ok,
};

/// Copies /bin/true to `dir/name` (the directory is created); returns the copy.
fn true_at(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", dir.display()));
    let dst = dir.join(name);
    std::fs::copy("/bin/true", &dst).unwrap_or_else(|e| panic!("copy to {}: {e}", dst.display()));
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dst.display()));
    dst
}

/// Replaces `path` with `text` in one rename, so a reload never reads half a file.
fn write_rules(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

#[test]
fn allowlisted_executable_is_counted_not_alerted() {
    root_or_skip!("allowlisted_executable_is_counted_not_alerted");
    let dir = Daemon::dir("allow");
    let allowed = true_at(&dir.path().join("allowed"), "anydesk");
    let other = true_at(&dir.path().join("other"), "anydesk");
    let rules = dir.path().join("allow.toml");
    write_rules(
        &rules,
        &format!(
            "[[allow]]\ntool = \"anydesk\"\nexecutable = \"{}/allowed/**\"\nreason = \"e2e helpdesk\"\n",
            path_str(dir.path())
        ),
    );
    let d = Daemon::start_in(dir, &["--rules", path_str(&rules)]);
    let allowed_pid = run_ok(&mut Command::new(&allowed));
    d.seen("exec", allowed_pid);
    // The control, after it: the same tool from outside the allowed directory.
    let other_pid = run_ok(&mut Command::new(&other));
    let a = d.alert_of("exec", other_pid);
    assert_match(&a, "anydesk", "binary", "anydesk", "exec");
    assert_context(&a, "high", &["temp_dir", "not_packaged"], "T1219.002");
    assert_process(
        &a,
        other_pid,
        "anydesk",
        path_str(&other),
        Some((std::process::id(), &own_exe())),
    );
    let so_far = read_alerts(&d.alerts);
    assert!(
        !so_far.iter().any(|a| a["process"]["pid"] == allowed_pid),
        "the allowlisted exec alerted: {so_far:?}"
    );
    let f = d.stop();
    assert!(f.of_pid(allowed_pid).is_empty(), "allowlisted exec alerted");
    assert_eq!(f.count("allowed", "anydesk"), 1, "{}", f.detection);
    assert_eq!(f.of_pid(other_pid).len(), 1, "the other copy alerted once");
}

/// A parent allowlist entry matches the parent's executable, never its `comm`: a process
/// started through a symbolic link named `msp-agent` has that comm (the kernel takes it from
/// the name executed) but another executable, and allows nothing; the real msp-agent (an
/// executable of that name) does. (`prctl(PR_SET_NAME)` sets a comm just as freely.)
#[test]
fn a_parent_allowlist_is_not_fooled_by_a_spoofed_comm() {
    root_or_skip!("a_parent_allowlist_is_not_fooled_by_a_spoofed_comm");
    let dir = Daemon::dir("allow-parent");
    let bin = dir.path().join("bin");
    true_at(&bin, "anydesk");
    let agent = bin.join("msp-agent");
    std::fs::copy(helper_bin(), &agent).expect("copying the helper as msp-agent");
    let link_dir = bin.join("link");
    std::fs::create_dir(&link_dir).expect("mkdir link");
    let spoof = link_dir.join("msp-agent");
    std::os::unix::fs::symlink(helper_bin(), &spoof).expect("symlinking the helper");
    let rules = dir.path().join("allow.toml");
    write_rules(
        &rules,
        "[[allow]]\nparent = \"msp-agent\"\nreason = \"the MSP's agent starts its tools\"\n",
    );
    let d = Daemon::start_in(dir, &["--rules", path_str(&rules)]);
    let run = |exe: &Path, pre: &[&str]| {
        let mut args: Vec<&str> = pre.to_vec();
        args.extend(["execveat", path_str(&bin), "anydesk", "anydesk"]);
        let r = run_bounded(exe, &args);
        r.assert_success();
        let child: u32 = r.get("child").parse().expect("child pid");
        (r.pid, child)
    };
    let (spoofer, spoofed_child) = run(&spoof, &[]);
    let a = d.alert_of("exec", spoofed_child);
    assert_eq!(a["process"]["parent"]["pid"], spoofer, "{a}");
    assert_eq!(
        a["process"]["parent"]["name"], "msp-agent",
        "the comm was set: {a}"
    );
    let (_, allowed_child) = run(&agent, &[]);
    d.seen("exec", allowed_child);
    let f = d.stop();
    assert!(
        f.of_pid(allowed_child).is_empty(),
        "the real agent's tool alerted"
    );
    assert_eq!(f.count("allowed", "anydesk"), 1, "{}", f.detection);
}

/// The allowlist applies to every alert of a process, its connects included. The helper
/// exits right after connecting (see
/// `network_alerts_of_short_lived_processes_carry_the_process_context`).
#[test]
fn allowlisted_executable_covers_its_connects() {
    root_or_skip!("allowlisted_executable_covers_its_connects");
    let dir = Daemon::dir("allow-net");
    let rules = dir.path().join("allow.toml");
    write_rules(
        &rules,
        &format!(
            "[[allow]]\ntool = \"teamviewer\"\nexecutable = \"{}\"\nreason = \"e2e\"\n",
            path_str(helper_bin())
        ),
    );
    let d = Daemon::start_in(dir, &["--rules", path_str(&rules)]);
    let run = helper(&["connect", "127.0.0.1", "5938"]);
    d.seen("connect", run.pid);
    // The control: the same connect from this (not allowlisted) process.
    let me = std::process::id();
    let e = TcpStream::connect(("127.0.0.1", 5938)).expect_err("nothing listens on 5938");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    let a = d.alert_of("connect", me);
    assert_match(&a, "teamviewer", "port", "tcp/5938", "connect");
    let f = d.stop();
    assert!(
        f.of_pid(run.pid).is_empty(),
        "the allowlisted helper's connect alerted: {:?}",
        f.of_pid(run.pid)
    );
    assert!(f.count("allowed", "teamviewer") >= 1, "{}", f.detection);
    assert_eq!(f.of_pid(me).len(), 1, "the control alerted once");
}

#[test]
fn repeats_within_the_dedup_window_alert_once() {
    root_or_skip!("repeats_within_the_dedup_window_alert_once");
    let dir = Daemon::dir("dedup");
    let rules = dir.path().join("dedup.toml");
    write_rules(&rules, "[context]\ndedup_window_secs = 3600\n");
    let d = Daemon::start_in(dir, &["--rules", path_str(&rules)]);
    let me = std::process::id();
    // Five connects from this very process.
    for _ in 0..5 {
        let e = TcpStream::connect(("127.0.0.1", 5938)).expect_err("nothing listens on 5938");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    }
    d.m.wait_for_n("the five connects to 5938", 5, |e| {
        e["event"] == "connect" && e["pid"] == me && e["dport"] == 5938
    });
    // The control: another process, another alert.
    let run = helper(&["connect", "127.0.0.1", "5938"]);
    let a = d.alert_of("connect", run.pid);
    assert_match(&a, "teamviewer", "port", "tcp/5938", "connect");
    assert_event_process(&a, run.pid, &helper_comm());
    let mine: Vec<_> = read_alerts(&d.alerts)
        .into_iter()
        .filter(|a| a["process"]["pid"] == me)
        .collect();
    assert_eq!(mine.len(), 1, "five connects, one alert: {mine:?}");
    let a = &mine[0];
    assert_match(a, "teamviewer", "port", "tcp/5938", "connect");
    assert_eq!(
        a["rmm"]["count"], 1,
        "the first alert stands for itself: {a}"
    );
    assert_eq!(a["event"]["outcome"], "failure", "{a}");
    // Known to the daemon since its start-up /proc walk.
    assert_eq!(a["process"]["executable"], own_exe().as_str(), "{a}");
    assert_eq!(
        a["process"]["parent"]["pid"],
        std::os::unix::process::parent_id(),
        "{a}"
    );
    let f = d.stop();
    assert_eq!(f.of_pid(me).len(), 1, "still one after the drain");
    assert!(
        f.detection["deduplicated"].as_u64() >= Some(4),
        "four repeats folded: {}",
        f.detection
    );
    assert_eq!(f.of_pid(run.pid).len(), 1, "the control alerted once");
}

/// 1-based (line, column) of the first occurrence of `needle` in `text`.
fn locate(text: &str, needle: &str) -> (usize, usize) {
    let off = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the file"));
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = off - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

fn rules_check(files: &[&Path]) -> rmm_tests::HelperRun {
    let mut args = vec!["rules", "check"];
    args.extend(files.iter().map(|f| path_str(f)));
    run_bounded(&monitor_bin(), &args)
}

const VALID: &str = r#"# a valid rules file
[[tool]]
id = "zz-valid"
name = "ZZ valid"
severity = "low"
technique = "T1219"
references = ["https://example.org/zz"]
process_names = ["zzvalid"]
ports = [{ ports = "47001-47002", proto = "tcp" }]

[[allow]]
tool = "zz-valid"
executable = "/opt/zz/**"

[context]
dedup_window_secs = 10
"#;

#[test]
fn rules_check_reports_every_error_with_its_location() {
    root_or_skip!("rules_check_reports_every_error_with_its_location");
    let dir = TempDir::new("det-check");
    let bad = dir.path().join("bad.toml");
    let text = r#"# an unknown key and a generic port
[[tool]]
id = "zz-bad"
name = "ZZ bad"
severity = "low"
technique = "T1219"
process_names = ["zzbad"]
colour = "red"
ports = [{ ports = "443", proto = "tcp" }]
"#;
    std::fs::write(&bad, text).expect("writing bad.toml");
    let run = rules_check(&[&bad]);
    assert!(
        !run.status.success(),
        "rules check accepted a broken file: {run:?}"
    );
    let b = path_str(&bad);
    for (needle, what) in [("colour", "colour"), ("\"443\"", "443")] {
        let (line, col) = locate(text, needle);
        let prefix = format!("{b}:{line}:{col}: ");
        assert!(
            run.stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(what)),
            "rules check reports {what} as {prefix}...; stderr:\n{}",
            run.stderr
        );
    }
}

#[test]
fn rules_check_accepts_valid_files_and_locates_errors() {
    root_or_skip!("rules_check_accepts_valid_files_and_locates_errors");
    let dir = TempDir::new("det-check");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, VALID).expect("writing good.toml");
    let run = rules_check(&[&good]);
    assert!(run.status.success(), "a valid file: {run:?}");
    assert!(
        run.stdout.contains(&format!(
            "{}: ok (1 tools, 1 allow entries)",
            path_str(&good)
        )),
        "{run:?}"
    );

    // One error per file, each located; both files are checked.
    let unknown = dir.path().join("unknown.toml");
    let unknown_text = VALID.replace("dedup_window_secs", "dedup_window_minutes");
    std::fs::write(&unknown, &unknown_text).expect("writing unknown.toml");
    let generic = dir.path().join("generic.toml");
    let generic_text = VALID.replace("\"47001-47002\"", "\"8000-8090\"");
    std::fs::write(&generic, &generic_text).expect("writing generic.toml");
    let run = rules_check(&[&unknown, &good, &generic]);
    assert!(!run.status.success(), "two broken files: {run:?}");
    for (file, text, needle, what) in [
        (
            &unknown,
            &unknown_text,
            "dedup_window_minutes",
            "dedup_window_minutes",
        ),
        (&generic, &generic_text, "\"8000-8090\"", "8080"),
    ] {
        let (line, col) = locate(text, needle);
        let prefix = format!("{}:{line}:{col}: ", path_str(file));
        assert!(
            run.stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(what)),
            "{what} reported as {prefix}...; stderr:\n{}",
            run.stderr
        );
    }

    // `rules list` merges the file into the catalog.
    let rules_dir = dir.path().join("rules.d");
    std::fs::create_dir(&rules_dir).expect("mkdir");
    let list = run_bounded(
        &monitor_bin(),
        &[
            "rules",
            "list",
            "--json",
            "--rules",
            path_str(&good),
            "--rules-dir",
            path_str(&rules_dir),
        ],
    );
    assert!(list.status.success(), "{list:?}");
    let tools: rmm_tests::Value = serde_json::from_str(&list.stdout)
        .unwrap_or_else(|e| panic!("rules list --json is not JSON ({e}): {}", list.stdout));
    let ids: Vec<&str> = tools
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {tools}"))
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    for id in ["zz-valid", "anydesk", "rustdesk", "teamviewer", "vnc"] {
        assert!(ids.contains(&id), "rules list lacks {id}: {ids:?}");
    }
}

fn tool_rules(id: &str, process_name: &str) -> String {
    format!(
        "[[tool]]\nid = \"{id}\"\nname = \"Test tool {id}\"\nseverity = \"low\"\n\
         technique = \"T1219\"\nreferences = [\"https://example.org/{id}\"]\n\
         process_names = [\"{process_name}\"]\n"
    )
}

fn sighup(d: &Daemon) {
    let pid = libc::pid_t::try_from(d.m.pid()).expect("pid fits");
    // SAFETY: kill(2) on our own, unreaped child.
    let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(rc, 0, "SIGHUP: {}", std::io::Error::last_os_error());
}

#[test]
fn sighup_reloads_rules_and_a_broken_file_keeps_the_old_ones() {
    root_or_skip!("sighup_reloads_rules_and_a_broken_file_keeps_the_old_ones");
    let n = nonce();
    let (old_id, old_name) = (format!("zz-old-{n}"), format!("zzrmmtest{n}"));
    let (new_id, new_name) = (format!("zz-new-{n}"), format!("zzrmmnew{n}"));
    let dir = Daemon::dir("reload");
    let old_exe = true_at(dir.path(), &old_name);
    let new_exe = true_at(dir.path(), &new_name);
    let rules = dir.path().join("custom.toml");
    write_rules(&rules, &tool_rules(&old_id, &old_name));
    let d = Daemon::start_in(dir, &["--rules", path_str(&rules)]);

    let check_old = |pid: u32| {
        let a = d.alert_of("exec", pid);
        assert_match(&a, &old_id, "binary", &old_name, "exec");
        assert_context(&a, "low", &["temp_dir", "not_packaged"], "T1219");
        assert_process(
            &a,
            pid,
            &rmm_tests::comm_of(&old_name),
            path_str(&old_exe),
            Some((std::process::id(), &own_exe())),
        );
    };
    let mut silent = Vec::new();
    // Not yet in the rules.
    let pid = run_ok(&mut Command::new(&new_exe));
    d.seen("exec", pid);
    silent.push(pid);
    check_old(run_ok(&mut Command::new(&old_exe)));

    // A broken file: reported, and the old rules stay live.
    write_rules(&rules, "[[tool]\nid = \"zz-broken\"\n");
    sighup(&d);
    let line = d.m.wait_for_log("about the broken rules file", |l| {
        l.contains("rules not reloaded")
    });
    assert!(line.contains("ERROR"), "logged as an error: {line}");
    assert!(line.contains(path_str(&rules)), "names the file: {line}");
    check_old(run_ok(&mut Command::new(&old_exe)));

    // A valid file without the old tool and with a new one.
    write_rules(&rules, &tool_rules(&new_id, &new_name));
    sighup(&d);
    d.m.wait_for_log("about the reload", |l| {
        l.starts_with("SIGHUP: rules reloaded")
    });
    let pid = run_ok(&mut Command::new(&old_exe));
    d.seen("exec", pid);
    silent.push(pid);
    let pid = run_ok(&mut Command::new(&new_exe));
    let a = d.alert_of("exec", pid);
    assert_match(&a, &new_id, "binary", &new_name, "exec");
    assert_context(&a, "low", &["temp_dir", "not_packaged"], "T1219");
    assert_eq!(a["rmm"]["tool_name"], format!("Test tool {new_id}"), "{a}");
    let so_far = read_alerts(&d.alerts);
    for pid in &silent {
        assert!(
            !so_far.iter().any(|a| a["process"]["pid"] == *pid),
            "pid {pid} alerted under rules that do not name it: {so_far:?}"
        );
    }
    let f = d.stop();
    for pid in &silent {
        assert!(f.of_pid(*pid).is_empty(), "pid {pid} alerted");
    }
    assert_eq!(f.count("alerts", &old_id), 2, "{}", f.detection);
    assert_eq!(f.count("alerts", &new_id), 1, "{}", f.detection);
    assert_eq!(
        f.detection["reloads"], 1,
        "only the valid file was swapped in: {}",
        f.detection
    );
}
